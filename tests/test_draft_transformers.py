"""``layerport draft`` on a checkpoint folder that transformers saved: its ``config.json`` read.

A Llama checkpoint's tensors do not tell its heads, its norms' epsilon, its
rotary base or its trained positions; the ``config.json`` beside them does.
The oracle is transformers itself: the drafted model file, exported as it is
drafted, must compute transformers' logits and pick its greedy ids, for a
head of its own and for one that shares the embedding's table.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hostile import assert_refused, assert_succeeded
from oracles import transformers_greedy_ids

transformers = pytest.importorskip("transformers")
transformers.utils.logging.disable_progress_bar()  # save_pretrained's bar would reach stderr

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no TOML parser of its own
    tomllib = pytest.importorskip("tomli")


def save_llama(folder: Path, *, family: str = "llama", **overrides: object) -> torch.nn.Module:
    """A small causal LM saved as ``save_pretrained`` saves one, weights away from their init."""
    sizes = dict(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        initializer_range=0.2,  # logits far enough apart that greedy ids mean something
    )
    classes = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }
    config_class, model_class = classes[family]
    config = config_class(**{**sizes, **overrides})
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():  # norms away from 1, so a norm left out cannot pass
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    return model


def draft(cli, checkpoint: Path) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    result = cli("draft", str(checkpoint))
    assert_succeeded(result)
    assert result.stderr == ""
    return result.stdout, tomllib.loads(result.stdout)


def test_a_llama_folder_drafts_the_model_it_is(cli, tmp_path: Path) -> None:
    save_llama(tmp_path, num_hidden_layers=11, rope_theta=500.0, tie_word_embeddings=False)
    text, model = draft(cli, tmp_path / "model.safetensors")
    uses = [(layer["use"], layer["weights"]) for layer in model["layer"]]
    assert uses == [
        ("embedding", "model.embed_tokens."),
        *(("decoder_block", f"model.layers.{block}.") for block in range(11)),  # 10 after 9
        ("rmsnorm", "model.norm."),
        ("linear", "lm_head."),
    ]
    block = model["layer"][1]["params"]
    assert block == {
        "num_heads": 6,
        "num_kv_heads": 2,
        "head_dim": 8,
        "norm_eps": 1e-5,
        "rope_base": 500.0,
        "norm": "rmsnorm",
        "causal": True,
        "rotary": True,
    }
    assert model["layer"][-2]["params"] == {"eps": 1e-5}
    assert model["inputs"] == {"ids": {"dtype": "int64", "shape": ["batch", "seq"]}}
    assert model["dims"] == {"past": {"max": 128}}
    assert model["outputs"] == {"logits": "lm_head.y"}
    assert model["model"]["name"] == "llama"
    # Nothing in the config asks for what the block does not compute.
    assert "# CHECK: model_type" not in text and "rotary scaling" not in text


def test_the_same_tensors_without_a_config_draft_loose_projections(cli, tmp_path: Path) -> None:
    """The oracle that the config, not the names, settles the heads."""
    save_llama(tmp_path)
    (tmp_path / "config.json").unlink()
    _, model = draft(cli, tmp_path / "model.safetensors")
    assert "decoder_block" not in [layer["use"] for layer in model["layer"]]


def test_a_config_that_is_not_transformers_is_left_alone(cli, tmp_path: Path) -> None:
    save_llama(tmp_path)
    (tmp_path / "config.json").write_text('{"learning_rate": 0.1}')
    text, _ = draft(cli, tmp_path / "model.safetensors")
    assert "config.json" not in text


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        pytest.param(
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 500000.0,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            },
            "# CHECK: rotary scaling 'llama3': decoder_block computes the default rotary",
            id="llama3-rope",
        ),
        pytest.param(
            {"rope_scaling": {"type": "linear", "factor": 2.0}},
            "# CHECK: rotary scaling 'linear'",
            id="transformers-4-rope-scaling",
        ),
        pytest.param(
            {"hidden_act": "gelu"},
            "# CHECK: hidden_act 'gelu': decoder_block's MLP uses SiLU",
            id="gelu",
        ),
        pytest.param(
            {"model_type": "mistral", "sliding_window": 32},
            "# CHECK: sliding_window 32: decoder_block attends to every earlier token",
            id="sliding-window",
        ),
        pytest.param(
            {"model_type": "gemma"},
            "# CHECK: model_type 'gemma': decoder_block computes Llama's",
            id="another-family",
        ),
        pytest.param(
            {"partial_rotary_factor": 0.5}, "# CHECK: partial_rotary_factor 0.5", id="partial-rope"
        ),
    ],
)
def test_what_the_block_does_not_compute_is_a_check(cli, tmp_path, changes, check) -> None:
    save_llama(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    text, _ = draft(cli, tmp_path / "model.safetensors")
    assert check in text


def _fifo(path: Path) -> None:
    os.mkfifo(path)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        pytest.param(
            lambda path: path.write_text("{not json"), "config.json is not JSON", id="garbage"
        ),
        pytest.param(lambda path: path.mkdir(), "config.json is not a regular file", id="a-folder"),
        pytest.param(_fifo, "config.json is not a regular file", id="a-fifo"),
        pytest.param(
            lambda path: path.write_text(" " * (1 << 20) + "{}"),
            "a transformers config is under 1 MiB",
            id="too-large",
        ),
        pytest.param(
            lambda path: path.write_text("[" * 100_000 + "]" * 100_000),
            "config.json is not JSON",
            id="too-deep",
        ),
    ],
)
def test_a_bad_config_is_one_line_and_exit_2(cli, tmp_path, make, words) -> None:
    from safetensors.numpy import save_file

    save_file({"fc.weight": np.ones((2, 8), np.float32)}, str(tmp_path / "model.safetensors"))
    make(tmp_path / "config.json")
    assert_refused(cli("draft", str(tmp_path / "model.safetensors")), 2, words)


def _logits_through_the_cache(onnx_path: Path, ids: np.ndarray, prompt: int) -> np.ndarray:
    """The file's logits for ``ids``: a prefill of ``prompt`` tokens, then one call per token."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    states = [tensor for tensor in session.get_inputs() if tensor.name != "ids"]
    feed: dict[str, np.ndarray] = {
        state.name: np.zeros((ids.shape[0], state.shape[1], 0, state.shape[3]), np.float32)
        for state in states
    }
    logits = []
    for start, stop in [(0, prompt), *((p, p + 1) for p in range(prompt, ids.shape[1]))]:
        outputs = dict(
            zip(names, session.run(None, {"ids": ids[:, start:stop], **feed}), strict=True)
        )
        logits.append(outputs["logits"])
        feed = {state.name: outputs[state.name.replace("past", "present")] for state in states}
    return np.concatenate(logits, axis=1)


def _exported_as_drafted(cli, folder: Path) -> Path:  # type: ignore[no-untyped-def]
    text, _ = draft(cli, folder / "model.safetensors")
    (folder / "drafted.toml").write_text(text)
    out = folder / "drafted.onnx"
    result = cli("export", str(folder / "drafted.toml"), "--weights",
                 str(folder / "model.safetensors"), "-o", str(out))  # fmt: skip
    assert_succeeded(result)
    assert "verification: passed" in result.stdout
    return out


def _assert_computes_transformers(cli, folder: Path, model: torch.nn.Module) -> None:  # type: ignore[no-untyped-def]
    exported = _exported_as_drafted(cli, folder)
    ids = np.random.default_rng(5).integers(0, 96, (3, 23))  # neither size was traced
    with torch.no_grad():
        expected = model(torch.tensor(ids)).logits.numpy()
    assert np.abs(_logits_through_the_cache(exported, ids, prompt=20) - expected).max() < 1e-4
    prompt = [5, 17, 42, 3, 9, 1, 88]
    result = cli("generate", str(exported), "--prompt-ids", ",".join(map(str, prompt)),
                 "--steps", "16")  # fmt: skip
    assert_succeeded(result)
    assert result.stdout.strip() == ",".join(map(str, transformers_greedy_ids(model, prompt, 16)))


@pytest.mark.slow  # the docs' walkthrough exports a tied head in the default run
def test_a_llama_whose_head_shares_the_embedding_exports_as_transformers_computes(
    cli, tmp_path: Path
) -> None:
    model = save_llama(tmp_path, tie_word_embeddings=True, rope_theta=500.0)
    text, drafted = draft(cli, tmp_path / "model.safetensors")
    head = drafted["layer"][-1]
    assert (head["name"], head["use"], head["weights"]) == (
        "lm_head",
        "linear",
        "model.embed_tokens.",
    )
    assert "shares the embedding's table" in text
    _assert_computes_transformers(cli, tmp_path, model)


@pytest.mark.slow
def test_a_qwen2_with_attention_biases_exports_as_transformers_computes(
    cli, tmp_path: Path
) -> None:
    model = save_llama(tmp_path, family="qwen2", tie_word_embeddings=False)
    _, drafted = draft(cli, tmp_path / "model.safetensors")
    assert drafted["model"]["name"] == "qwen2"
    assert drafted["layer"][1]["use"] == "decoder_block"
    _assert_computes_transformers(cli, tmp_path, model)


def test_a_causal_lm_without_its_head_is_a_check_and_does_not_generate(cli, tmp_path: Path) -> None:
    """The checkpoint lost lm_head.weight though its config says the head has its own: the
    draft says the head is missing, and generate refuses hidden features for logits."""
    from safetensors.numpy import load_file, save_file

    save_llama(tmp_path, tie_word_embeddings=False)
    checkpoint = tmp_path / "model.safetensors"
    tensors = load_file(str(checkpoint))
    del tensors["lm_head.weight"]
    save_file(tensors, str(checkpoint))
    text, model = draft(cli, checkpoint)
    assert "# CHECK: config.json names a causal language model whose head" in text
    assert "logits" not in model["outputs"]
    (tmp_path / "m.toml").write_text(text)
    out = tmp_path / "m.onnx"
    exported = cli("export", str(tmp_path / "m.toml"), "--weights", str(checkpoint),
                   "-o", str(out), "--no-verify")  # fmt: skip
    assert_succeeded(exported)
    result = cli("generate", str(out), "--prompt-ids", "1,2,3")
    assert_refused(result, 2, "output y gives 48 values per position, but input ids takes 96 ids")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        (
            {"num_attention_heads": "8"},
            "num_attention_heads must be a whole number above 0, got '8'",
        ),
        ({"num_key_value_heads": 0}, "num_key_value_heads must be a whole number above 0, got 0"),
        ({"num_attention_heads": 4.0}, "num_attention_heads must be a whole number above 0"),
        ({"rms_norm_eps": "1e-5"}, "rms_norm_eps must be a finite number above 0"),
        ({"rope_parameters": {"rope_theta": -1}}, "rope_theta must be a finite number above 0"),
        ({"hidden_act": ["silu"]}, "hidden_act must be a string"),
        ({"rope_scaling": "linear"}, "rope_scaling must be a table of settings"),
        ({"sliding_window": "16"}, "sliding_window must be a whole number above 0"),
    ],
    ids=[
        "heads-text",
        "kv-heads-0",
        "heads-float",
        "eps-text",
        "theta-negative",
        "act-list",
        "scaling-text",
        "window-text",
    ],
)
def test_a_config_value_of_the_wrong_type_is_refused_naming_it(
    cli, tmp_path: Path, changes, words
) -> None:
    """transformers refuses these configs too: a draft from them would drop the value."""
    save_llama(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    assert_refused(cli("draft", str(tmp_path / "model.safetensors")), 2, words)


def test_a_dangling_config_link_is_refused(cli, tmp_path: Path) -> None:
    save_llama(tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").symlink_to(tmp_path / "elsewhere.json")
    assert_refused(cli("draft", str(tmp_path / "model.safetensors")), 2, "cannot read")


def test_heads_that_fit_no_layer_are_a_check(cli, tmp_path: Path) -> None:
    save_llama(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_attention_heads": 8}))
    text, _ = draft(cli, tmp_path / "model.safetensors")
    assert "# CHECK: config.json's heads (num_heads = 8, num_kv_heads = 2) fit no layer's" in text
