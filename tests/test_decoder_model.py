"""A decoder-only language model in a model file (issue 24): one file, its KV cache streamed.

The oracle is transformers' own ``LlamaForCausalLM`` holding the same weights:
its logits, its cache and its greedy ids, at sizes the export was never traced
at. layerport's verification (prefill + decode steps == the whole pass) runs
against its own eager twin, so it cannot be the judge here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

transformers = pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from hostile import assert_refused  # noqa: E402
from oracles import transformers_greedy_ids  # noqa: E402

from conftest import run_process  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, VOCAB = 4, 2, 16, 100

DECODER = """\
[model]
name = "tiny-llama"

[inputs.ids]
dtype = "int64"
shape = ["batch", "seq"]

[[layer]]
name = "embed"
use = "embedding"
weights = "model.embed_tokens."

[[layer]]
name = "block0"
use = "decoder_block"
weights = "model.layers.0."
params = { num_heads = 4, num_kv_heads = 2 }

[[layer]]
name = "block1"
use = "decoder_block"
weights = "model.layers.1."
params = { num_heads = 4, num_kv_heads = 2 }

[[layer]]
name = "norm"
use = "rmsnorm"
weights = "model.norm."

[[layer]]
name = "head"
use = "linear"
weights = "lm_head."
params = { bias = false }

[dims.past]
max = 96

[outputs]
logits = "head.y"
"""
STATES = [f"block{block}_past_{part}" for block in (0, 1) for part in ("key", "value")]


def llama() -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HEADS * HEAD_DIM,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so a norm left out cannot pass
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, transformers.LlamaForCausalLM]:
    folder = tmp_path_factory.mktemp("decoder")
    model = llama()
    tensors = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, folder / "llama.safetensors")
    (folder / "llama.toml").write_text(DECODER)
    return folder, model


@pytest.fixture(scope="module")
def exported(decoder) -> Path:
    """The decoder exported and verified once, as a user runs it."""
    folder, _ = decoder
    out = folder / "llama.onnx"
    result = run_process("export", str(folder / "llama.toml"), "--weights",
                         str(folder / "llama.safetensors"), "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "verification: passed" in result.stdout
    assert "decoding: prompt" in result.stdout  # the stream proof ran
    return out


def empty_cache(batch: int) -> dict[str, np.ndarray]:
    return {name: np.zeros((batch, KV_HEADS, 0, HEAD_DIM), np.float32) for name in STATES}


def test_one_file_takes_and_gives_back_a_cache_per_block(exported) -> None:
    model = onnx.load(str(exported))
    assert [i.name for i in model.graph.input] == ["ids", *STATES]
    assert [o.name for o in model.graph.output] == [
        "logits",
        *(name.replace("past", "present") for name in STATES),
    ]
    record = {p.key: p.value for p in model.metadata_props}
    assert json.loads(record["layerport.streaming"]) == {
        "dim": "seq",
        "grows": "past",
        "carry": [[name, name.replace("past", "present")] for name in STATES],
    }
    assert json.loads(record["layerport.max_dims"]) == {"past": 96}
    assert json.loads(record["layerport.min_dims"]) == {"past": 0}


def test_prefill_and_steps_equal_transformers(decoder, exported) -> None:
    _, model = decoder
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    ids = np.random.default_rng(3).integers(0, VOCAB, (3, 41))  # neither size was traced
    with torch.no_grad():
        expected = model(torch.tensor(ids), use_cache=True)
    # The prefill of 38 tokens, then three single-token steps through the cache.
    outputs = dict(
        zip(names, session.run(None, {"ids": ids[:, :38], **empty_cache(3)}), strict=True)
    )
    logits = [outputs["logits"]]
    for position in range(38, 41):
        feed = {"ids": ids[:, position : position + 1]}
        feed |= {name: outputs[name.replace("past", "present")] for name in STATES}
        outputs = dict(zip(names, session.run(None, feed), strict=True))
        logits.append(outputs["logits"])
    reference = expected.logits.numpy()
    assert np.abs(np.concatenate(logits, axis=1) - reference).max() < 1e-5
    cache = expected.past_key_values.layers[1]
    assert np.abs(outputs["block1_present_key"] - cache.keys.numpy()).max() < 1e-5
    assert np.abs(outputs["block1_present_value"] - cache.values.numpy()).max() < 1e-5


def test_generate_gives_transformers_ids_and_eager_agrees(decoder, exported, cli) -> None:
    folder, model = decoder
    prompt = [5, 17, 42, 3, 9, 1, 88]
    expected = transformers_greedy_ids(model, prompt, 24)
    result = cli("generate", str(exported), "--prompt-ids", ",".join(map(str, prompt)),
                 "--steps", "24", "--weights", str(folder / "llama.safetensors"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == ",".join(map(str, expected))
    assert "eager PyTorch picked the same 24 ids" in result.stderr
    as_json = cli("generate", str(exported), "--prompt-ids", "7", "--steps", "3", "--json")
    assert as_json.exit_code == 0, as_json.stderr
    assert json.loads(as_json.stdout)["ids"] == transformers_greedy_ids(model, [7], 3)


@pytest.mark.parametrize("form", ["standard", "fused"])
def test_generate_runs_without_torch(exported, fused, form) -> None:
    from test_torch_free import PROBE

    file = exported if form == "standard" else fused[0]
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, "generate", str(file), "--prompt-ids", "3,4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.stderr.strip().splitlines()[-1] == "MODULES  EXIT 0", completed.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--prompt-ids", "1,x"], "expected ids separated by commas, such as 1,2,3; got '1,x'"),
        (["--prompt-ids", "1,-2"], "ids are 0 or more"),
        # Past int64: numpy cannot hold it, and it must not come back as an internal error.
        (["--prompt-ids", "1," + "9" * 25], f"ids are 0 or more, and below 2**63; got '1,{'9' * 25}'"),
        (["--prompt-ids", "1,100"], "input ids holds 100"),
        # prompt 40 + 60 steps: the last step's cache holds 99 > the declared 96.
        # The prefill, then 59 calls fed caches of 40 to 98: the 60th id is never fed back.
        (["--prompt-ids", ",".join(["1"] * 40), "--steps", "60"],
         "decoding 60 ids after a prompt of 40 feeds back a cache of 98 positions, but dim past "
         "must be at most 96 (the largest size the model declares, recorded in the file)"),
        (["--prompt-ids", "1", "--steps", "98"], "feeds back a cache of 97 positions"),
        # Refused before the cache is made, not by numpy failing to allocate 116 TiB.
        (["--prompt-ids", "1", "--steps", "1000000000000"],
         "feeds back a cache of 999999999999 positions, but dim past must be at most 96"),
        (["--prompt-ids", "1", "--eager"],
         "the file was exported from a checkpoint: give it with --weights to decode in eager"),
    ],
)  # fmt: skip
def test_generate_refuses_bad_input(exported, cli, arguments, message) -> None:
    result = cli("generate", str(exported), *arguments)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("Error:") == 1
    assert result.stdout == ""


@pytest.mark.parametrize("flags", [[], ["--copy-cache"]])
def test_generate_runs_up_to_the_declared_cache(decoder, fused, cli, flags) -> None:
    """1 prompt id and 97 steps: the last call is fed a cache of 96 positions, the declared
    most, so the decoding fits; each way of carrying the cache gives transformers' ids
    (this decoding picks id 2, the config's end of sequence, at step 14)."""
    _, model = decoder
    result = cli("generate", str(fused[0]), "--prompt-ids", "5", "--steps", "97", "--json", *flags)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["ids"] == transformers_greedy_ids(model, [5], 97)


def test_generate_refuses_a_file_without_a_cache(cli, tmp_path) -> None:
    out = tmp_path / "linear.onnx"
    assert cli("export", "linear", "-o", str(out), "--no-verify").exit_code == 0
    result = cli("generate", str(out), "--prompt-ids", "1,2")
    assert result.exit_code == 2
    assert "the file carries no KV cache" in result.stderr


def edited_record(file: Path, folder: Path, key: str, value: object) -> Path:
    """A copy of ``file`` in ``folder`` whose layerport record says ``value`` for ``key``."""
    model = onnx.load(str(file))
    for prop in model.metadata_props:
        if prop.key == f"layerport.{key}":
            prop.value = json.dumps(value)
    edited = folder / f"edited-{key}.onnx"
    onnx.save(model, str(edited))
    return edited


def test_generate_refuses_a_cache_past_the_memory_limit(exported, cli, tmp_path) -> None:
    """A file that declares no longest cache (its record edited): the cache a decoding makes
    is sized against the memory limit before it is allocated."""
    edited = edited_record(exported, tmp_path, "max_dims", {})
    result = cli("generate", str(edited), "--prompt-ids", "1", "--steps", "1000000000000")
    assert result.exit_code == 2, result.stderr
    # Four caches of (1, 2, past, 16) float32: 512 bytes a position.
    assert "a cache of 999999999999 positions needs about 465.7 TiB, over the 4.0 GiB limit" in (
        result.stderr
    )
    assert result.stderr.count("Error:") == 1 and result.stdout == ""


@pytest.mark.parametrize(
    ("carry", "message"),
    [
        ([*STATES, "block9_past_key"],
         "the file's layerport metadata is damaged: its stream carries into block9_past_key, "
         "which is not one of its inputs"),
        ([(name, "nowhere") for name in STATES],
         "the file's layerport metadata is damaged: its stream carries nowhere, which is not "
         "one of its outputs"),
        ([(name, "block0_present_key") for name in STATES],
         "the file's layerport metadata is damaged: its stream carries block0_present_key "
         "into more than one input"),
    ],
)  # fmt: skip
def test_generate_refuses_a_record_whose_stream_names_what_the_file_lacks(
    exported, cli, tmp_path, carry, message
) -> None:
    pairs = [
        list(pair) if isinstance(pair, tuple) else [pair, pair.replace("past", "present")]
        for pair in carry
    ]
    stream = {"dim": "seq", "grows": "past", "carry": pairs}
    edited = edited_record(exported, tmp_path, "streaming", stream)
    for flags in ([], ["--copy-cache"]):
        result = cli("generate", str(edited), "--prompt-ids", "1,2", "--steps", "3", *flags)
        assert result.exit_code == 2, result.stderr
        assert message in result.stderr
        assert result.stderr.count("Error:") == 1 and result.stdout == ""


def test_verify_refuses_a_record_whose_stream_is_not_the_layers(decoder, exported, cli, tmp_path):
    """A record whose stream crosses block0's key and value: every name is the file's own, so
    only the layer's stream tells it, and generate would decode garbage through it."""
    folder, _ = decoder
    crossed = [[name, name.replace("past", "present")] for name in STATES]
    crossed[0][1], crossed[1][1] = crossed[1][1], crossed[0][1]
    stream = {"dim": "seq", "grows": "past", "carry": crossed}
    edited = edited_record(exported, tmp_path, "streaming", stream)
    weights = str(folder / "llama.safetensors")
    for command in (["verify", str(edited)], ["generate", str(edited), "--prompt-ids", "1"]):
        result = cli(*command, "--weights", weights)
        assert result.exit_code == 2, result.stderr
        assert (
            "the file's layerport metadata is damaged: its stream carries block0_present_value "
            "into block0_past_key, but layer 'tiny-llama' carries block0_present_key there"
        ) in result.stderr
        assert result.stderr.count("Error:") == 1 and result.stdout == ""


def test_a_cache_of_the_wrong_heads_or_length_is_refused(exported, cli, tmp_path) -> None:
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([[1, 2]], dtype=np.int64))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((1, KV_HEADS + 1, 3, HEAD_DIM), np.float32))
    good = tmp_path / "good.npy"
    np.save(good, np.zeros((1, KV_HEADS, 3, HEAD_DIM), np.float32))
    inputs = ["--input", f"ids={ids}"]
    for name in STATES:
        inputs += ["--input", f"{name}={wrong if name == 'block1_past_value' else good}"]
    result = cli("infer", str(exported), *inputs)
    assert result.exit_code == 2
    assert "input block1_past_value axis 1 must be 2, got 3" in result.stderr
    long = tmp_path / "long.npy"
    np.save(long, np.zeros((1, KV_HEADS, 97, HEAD_DIM), np.float32))
    inputs = ["--input", f"ids={ids}"]
    inputs += [arg for name in STATES for arg in ("--input", f"{name}={long}")]
    result = cli("infer", str(exported), *inputs)
    assert result.exit_code == 2
    assert "must be at most 96" in result.stderr


def test_an_export_past_the_declared_maximum_is_refused(decoder, cli, tmp_path) -> None:
    folder, _ = decoder
    result = cli("export", str(folder / "llama.toml"), "--weights",
                 str(folder / "llama.safetensors"), "--dim", "past=97", "-o",
                 str(tmp_path / "x.onnx"))  # fmt: skip
    assert result.exit_code == 2
    assert "dim past of layer 'tiny-llama' must be at most 96 (its declared maximum), got 97" in (
        result.stderr
    )
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def fused(decoder) -> tuple[Path, Any]:
    """The decoder exported in the fused form (GroupQueryAttention), verified: the file and
    its report."""
    from layerport.plugin import export_layer, get_registry, resolve_config

    folder, _ = decoder
    config = resolve_config(
        get_registry(), str(folder / "llama.toml"), weights=folder / "llama.safetensors"
    )
    result = export_layer(config, trials=1, form="fused")
    out = folder / "llama-fused.onnx"
    out.write_bytes(result.model_bytes)
    return out, result.report


def test_the_fused_form_generates_transformers_ids(decoder, fused, cli) -> None:
    """The fused file passes the stream proof, its cache copied and bound alike, and decodes
    as transformers does: generate works with either form, and either cache."""
    _, model = decoder
    file, report = fused
    assert report is not None and report.passed
    assert report.streaming is not None and "decoding" in report.streaming
    bound_cases = {c.case for c in report.comparisons if c.case.endswith(", cache bound")}
    copied_cases = {c.case for c in report.comparisons if c.case.startswith("decoding ")}
    assert len(bound_cases) == 18 and len(copied_cases) == 36  # every stream, both ways
    assert "com.microsoft" in {entry.domain for entry in onnx.load(str(file)).opset_import}
    prompt = [9, 8, 7, 6]
    expected = transformers_greedy_ids(model, prompt, 12)
    for flags, cache in (([], "bound"), (["--copy-cache"], "copied")):
        generated = cli("generate", str(file), "--prompt-ids", "9,8,7,6", "--steps", "12",
                        "--json", *flags)  # fmt: skip
        assert generated.exit_code == 0, generated.stderr
        result = json.loads(generated.stdout)
        assert (result["ids"], result["cache"]) == (expected, cache)


def test_the_standard_file_copies_its_cache(exported, cli) -> None:
    result = cli("generate", str(exported), "--prompt-ids", "3", "--steps", "2")
    assert result.exit_code == 0, result.stderr
    assert "the cache copied" in result.stderr


def test_a_bound_cache_that_reads_its_buffer_length_fails_verification(
    decoder, monkeypatch
) -> None:
    """The bound stream proof can fail: a variant that takes its buffers' length for the
    cache's (the rewrite left out) is caught, and the failure names the bound stream."""
    from onnx import TensorProto, helper

    from layerport.errors import VerificationFailed
    from layerport.plugin import export_layer, get_registry, resolve_config
    from layerport.runtime import bound

    def unrewritten(model: onnx.ModelProto, carried: object = None) -> onnx.ModelProto:
        variant = onnx.ModelProto()
        variant.CopyFrom(model)
        length = helper.make_tensor_value_info(bound.PAST_LENGTH, TensorProto.INT64, [])
        variant.graph.input.append(length)
        return variant

    monkeypatch.setattr(bound, "bound_model", unrewritten)
    folder, _ = decoder
    config = resolve_config(
        get_registry(), str(folder / "llama.toml"), weights=folder / "llama.safetensors"
    )
    with pytest.raises(VerificationFailed) as failure:
        export_layer(config, trials=1, form="fused")
    report = failure.value.report
    failed = {c.case for c in report.comparisons if not c.passed}
    assert failed and all(", cache bound" in case for case in failed)
    assert "cache bound" in str(failure.value)


@pytest.mark.parametrize("form", ["fused", "standard"])
def test_the_bound_cache_example_decodes_transformers_ids(
    decoder, fused, exported, monkeypatch, capsys, form
) -> None:
    """docs/models.md's Python example of a bound cache, run on the fused file it names, and
    on a standard file, whose cache it copies."""
    import re

    from test_docs import MODELS_PAGE

    _, model = decoder
    blocks = re.findall(r"```python\n(.*?)```", MODELS_PAGE.read_text(), flags=re.DOTALL)
    example = next(block for block in blocks if "bound_session(" in block)
    monkeypatch.chdir(fused[0].parent)
    if form == "standard":
        example = example.replace('"llama-fused.onnx"', repr(str(exported)))
    exec(compile(example, "docs/models.md", "exec"), {"__name__": "bound_example"})
    assert capsys.readouterr().out.strip() == str(transformers_greedy_ids(model, [1, 2, 3], 8))


def test_export_takes_a_form_by_name(decoder, cli, tmp_path) -> None:
    folder, _ = decoder
    model, weights = str(folder / "llama.toml"), str(folder / "llama.safetensors")
    out = tmp_path / "fused.onnx"
    exported = cli("export", model, "--weights", weights, "--form", "fused", "-o", str(out))
    assert exported.exit_code == 0, exported.stderr
    assert "form:         fused" in exported.stdout
    assert "GroupQueryAttention" in {node.op_type for node in _all_nodes(onnx.load(str(out)).graph)}
    for arguments, message in (
        (["--form", "flash"], "has the export forms standard, fused, not 'flash'"),
        (["--form", "fused", "--optimize"], "--form exports one layer in the form named"),
    ):
        refused = cli("export", model, "--weights", weights, "-o", str(out), *arguments)
        assert refused.exit_code == 2, refused.stderr
        assert message in refused.stderr and refused.stderr.count("Error:") == 1


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    nodes = list(graph.node)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                nodes += _all_nodes(attribute.g)
    return nodes


def test_a_float16_fused_decoder_streams_and_generates(decoder, cli, tmp_path) -> None:
    """The fused form in float16, a whole model file (its norms in float16 too): the stream
    proof passes, the cache copied and bound, and generate picks transformers' ids."""
    folder, model = decoder
    out = tmp_path / "half.onnx"
    exported = cli("export", str(folder / "llama.toml"), "--weights",
                   str(folder / "llama.safetensors"), "--form", "fused", "--dtype", "float16",
                   "-o", str(out), "--json")  # fmt: skip
    assert exported.exit_code == 0, exported.stderr
    caches = [value for value in onnx.load(str(out)).graph.input if value.name != "ids"]
    assert {value.type.tensor_type.elem_type for value in caches} == {onnx.TensorProto.FLOAT16}
    assert json.loads(exported.stdout)["verification"]["cases"] == 117  # 18 streams bound
    prompt = [5, 17, 42, 3]
    # float16 files here are within 1e-3 of float64 (export error 5.9e-4): a greedy pick can
    # differ from float32's only where its two best logits are closer than that, so the ids
    # below must agree on any CPU only while every step's margin stays well above it.
    expected = transformers_greedy_ids(model, prompt, 8)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + expected])).logits[0, len(prompt) - 1 : -1]
    best = logits.topk(2).values
    assert float((best[:, 0] - best[:, 1]).min()) > 5e-3
    results = []
    for flags in ([], ["--copy-cache"]):
        generated = cli("generate", str(out), "--prompt-ids", "5,17,42,3", "--steps", "8",
                        "--json", *flags)  # fmt: skip
        assert generated.exit_code == 0, generated.stderr
        results.append(json.loads(generated.stdout))
    assert [result["cache"] for result in results] == ["bound", "copied"]
    assert [result["ids"] for result in results] == [expected, expected]


def test_show_gives_the_caches_largest_size(decoder, cli) -> None:
    folder, _ = decoder
    result = cli("show", str(folder / "llama.toml"), "--json")
    assert result.exit_code == 0, result.stderr
    dims = {dim["name"]: dim for dim in json.loads(result.stdout)["dims"]}
    assert dims["past"]["largest"] == 96 and dims["batch"]["largest"] is None
    table = cli("show", str(folder / "llama.toml"))
    assert table.exit_code == 0, table.stderr
    past = next(line for line in table.stdout.splitlines() if line.strip().startswith("past "))
    assert past.split()[:5] == ["past", "6", "0", "0", "96"]


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (1, "disagree at step 1: onnxruntime picked {0}, eager {3}"),
        (3, "disagree at step 3, after the same {0},{1}: onnxruntime picked {2}, eager {3}"),
    ],
)
def test_an_eager_disagreement_exits_1_and_keeps_the_files_ids(
    decoder, exported, cli, monkeypatch, step, message
) -> None:
    """Eager PyTorch made to pick otherwise: exit 1, one line naming the step, and the ids the
    file decoded still printed (they are what a deployment of the file would produce)."""
    from layerport.cli.commands import generate

    folder, _ = decoder
    args = ["generate", str(exported), "--prompt-ids", "5,17", "--steps", "3"]
    ids = [int(i) for i in cli(*args).stdout.strip().split(",")]
    wrong = [*ids[: step - 1], (ids[step - 1] + 1) % VOCAB, *ids[step:]]
    monkeypatch.setattr(generate, "_eager_ids", lambda *_: wrong)
    result = cli(*args, "--weights", str(folder / "llama.safetensors"))
    assert_refused(result, 1, message.format(*ids, wrong[step - 1]))
    assert result.stdout == ",".join(map(str, ids)) + "\n"


def test_infer_takes_a_prefill_with_every_cache_left_out(exported, cli, tmp_path) -> None:
    """A cache left out is empty (past 0), as a cache's smallest size allows: the prefill."""
    ids = np.random.default_rng(4).integers(0, VOCAB, (2, 9))
    np.save(tmp_path / "ids.npy", ids)
    result = cli("infer", str(exported), "--input", f"ids={tmp_path / 'ids.npy'}",
                 "--output", str(tmp_path / "out.npz"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    expected = session.run(["logits"], {"ids": ids, **empty_cache(2)})[0]
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["logits"], expected)
        assert out["block1_present_key"].shape == (2, KV_HEADS, 9, HEAD_DIM)


def test_infer_refuses_some_caches_given_and_others_not(exported, cli, tmp_path) -> None:
    np.save(tmp_path / "ids.npy", np.ones((1, 1), np.int64))
    np.save(tmp_path / "key.npy", np.zeros((1, KV_HEADS, 3, HEAD_DIM), np.float32))
    result = cli("infer", str(exported), "--input", f"ids={tmp_path / 'ids.npy'}",
                 "--input", f"block0_past_key={tmp_path / 'key.npy'}")  # fmt: skip
    assert_refused(
        result,
        2,
        "input block0_past_value is required (batch x 2 x past x 16); past may be 0: "
        "leave out every input of that dim for an empty one",
    )


@pytest.mark.slow
def test_bench_times_a_decoder_at_its_calls_within_its_longest_cache(decoder, cli) -> None:
    """The model's cache holds 96 positions: the steps past 512 and 2048 and the prefill of
    512 are timed at 96, with a note that says so; every form is timed beside eager."""
    folder, _ = decoder
    result = cli("bench", str(folder / "llama.toml"), "--weights",
                 str(folder / "llama.safetensors"), "--min-time", "0.01", "--threads", "1",
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "Note: the model's cache holds at most 96 positions" in result.stderr
    data = json.loads(result.stdout)
    calls = [entry["call"] for entry in data["calls"]]
    assert calls == ["decode step, past 64", "decode step, past 96", "prefill of 96"]
    assert [entry["dims"]["past"] for entry in data["calls"]] == [64, 96, 0]
    engines = set(data["calls"][0]["engines"])
    assert {"eager", "onnxruntime", "onnxruntime-fused", "onnxruntime-fused-bound"} <= engines


def test_a_decoder_that_fails_verification_names_the_first_diverging_block(
    decoder, exported, cli
) -> None:
    """A tolerance no float32 file can meet fails the file; the pinpointing export (every
    layer's output exposed) runs on a model whose caches stream, and names a layer."""
    folder, _ = decoder
    result = cli("verify", str(exported), "--weights", str(folder / "llama.safetensors"),
                 "--atol", "1e-12", "--rtol", "0", "--trials", "1")  # fmt: skip
    assert_refused(result, 1, "is the first whose output diverges from its eager twin")
    assert "could not pinpoint" not in result.stderr
