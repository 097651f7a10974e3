"""The fused form: the same file interface through onnxruntime's ``GroupQueryAttention``.

The oracle is eager torch's standard math (``Attention.forward``), never the
fused op's own eager implementation: the fused file must pass the same grid
and the same stream proof (prefill + single-token steps == the whole pass) as
the standard export, at sizes never traced, in float32 and float16. Rotary
tables wrong past the ones onnxruntime holds must fail, naming the step.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from layerport_attention import fused_graph

from layerport.plugin import (
    UserInputError,
    build_module,
    export_layer,
    get_registry,
    resolve_config,
)
from layerport.plugin import cli as layerport_cli

# head_dim 16: onnxruntime's kernel rotates heads of a multiple of 16 features.
GROUPED = {"embed_dim": 64, "num_heads": 4, "num_kv_heads": 2}


def _ops(graph: onnx.GraphProto) -> list[str]:
    """Every node's op, in ``graph`` and its subgraphs, domain-qualified outside ONNX's."""
    found = []
    for node in graph.node:
        found.append(f"{node.domain}.{node.op_type}" if node.domain else node.op_type)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found += _ops(attribute.g)
    return found


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(
    ("layer", "norm", "matmuls", "norms"),
    [
        ("attention", None, 2, []),
        (
            "decoder_block",
            "rmsnorm",
            4,
            ["com.microsoft.SkipSimplifiedLayerNormalization"],
        ),
        (
            "decoder_block",
            "layernorm",
            4,
            ["LayerNormalization", "com.microsoft.SkipLayerNormalization"],
        ),
    ],
    ids=["attention", "block-rmsnorm", "block-layernorm"],
)
def test_the_fused_form_passes_the_stream_proof(
    layer: str, norm: str | None, matmuls: int, norms: list[str], dtype: str
) -> None:
    params = GROUPED if norm is None else {**GROUPED, "norm": norm}
    config = resolve_config(get_registry(), layer, params, dtype=dtype)
    result = export_layer(config, trials=1, form="fused")
    report = result.report
    assert report is not None and report.passed
    assert (
        report.streaming
        == "decoding: prompt 1, 8, 21 then 1, 21 single-token steps, through the past state"
    )
    # The grid holds past 0, and several rows of a chunk after a cache (the Scan's case).
    assert {"batch=9, seq=21, past=17", "batch=4, seq=1, past=0"} <= {
        re.sub(r" draw \d+$", "", c.case) for c in report.comparisons
    } or any("past=0" in c.case for c in report.comparisons)
    assert result.record.form == "fused"
    model = onnx.load_from_string(result.model_bytes)
    assert {prop.key: prop.value for prop in model.metadata_props}["layerport.form"] == "fused"
    ops = _ops(model.graph)
    # One GroupQueryAttention for the direct call with the tables onnxruntime folds, one
    # for a sequence past them, one in the Scan over rows.
    assert ops.count("com.microsoft.GroupQueryAttention") == 3
    # Q, K and V in one MatMul: then the output projection (and the MLP's gate and up
    # projections in one, and its down projection).
    assert [node.op_type for node in model.graph.node].count("MatMul") == matmuls
    assert [op for op in ops if "Normalization" in op] == norms
    assert not any(op.startswith("layerport.") for op in ops)
    assert {entry.domain for entry in model.opset_import} == {"", "com.microsoft"}
    # onnx's checker passes it, as every file must before a command opens it: no
    # onnxruntime op in the ONNX domain (SimplifiedLayerNormalization is one).
    onnx.checker.check_model(model, full_check=True)


def test_the_fused_file_keeps_the_standard_interface() -> None:
    config = resolve_config(get_registry(), "decoder_block", GROUPED)
    files = {
        form: onnx.load_from_string(export_layer(config, verify=False, form=form).model_bytes)
        for form in ("standard", "fused")
    }

    def interface(model: onnx.ModelProto) -> list[str]:
        values = [*model.graph.input, *model.graph.output]
        return [str(value.type).replace("\n", " ") + value.name for value in values]

    assert interface(files["fused"]) == interface(files["standard"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("layer", ["attention", "decoder_block"])
def test_a_plain_session_opens_the_fused_file_without_a_warning(
    tmp_path: Path, layer: str, dtype: str
) -> None:
    """A deployment's own ``InferenceSession``, at onnxruntime's default log level: the file
    gives it nothing to warn about (the lengths' Cast once made it warn at every creation)."""
    import subprocess
    import sys

    config = resolve_config(get_registry(), layer, GROUPED, dtype=dtype)
    path = tmp_path / "fused.onnx"
    path.write_bytes(export_layer(config, verify=False, form="fused").model_bytes)
    opened = subprocess.run(
        [sys.executable, "-c", f"import onnxruntime; onnxruntime.InferenceSession({str(path)!r})"],
        capture_output=True,
        text=True,
    )
    assert opened.returncode == 0 and opened.stderr == "", opened.stderr


def test_padding_through_the_fused_form_matches_eager() -> None:
    """A row whose first queries see only padding gets zeros there, as eager gives."""
    config = resolve_config(get_registry(), "attention", GROUPED)
    session = ort.InferenceSession(
        export_layer(config, verify=False, form="fused").model_bytes,
        providers=["CPUExecutionProvider"],
    )
    generator = np.random.default_rng(3)
    batch, seq, past = 3, 5, 4
    feeds = {
        "x": generator.standard_normal((batch, seq, 64)).astype(np.float32),
        "past_key": generator.standard_normal((batch, 2, past, 16)).astype(np.float32),
        "past_value": generator.standard_normal((batch, 2, past, 16)).astype(np.float32),
        "padding_mask": np.zeros((batch, seq), dtype=bool),
        "past_padding": generator.random((batch, past)) < 0.5,
    }
    feeds["past_padding"][0] = True
    feeds["padding_mask"][0, :2] = True
    got = session.run(None, feeds)
    module = build_module(config)
    with torch.no_grad():
        expected = module(*(torch.from_numpy(value) for value in feeds.values()))
    # Rows that see only padding attend to nothing: the output projection's bias alone.
    torch.testing.assert_close(expected[0][0, :2], module.o_proj.bias.expand(2, -1))
    for actual, wanted in zip(got, expected, strict=True):
        np.testing.assert_allclose(actual, wanted.numpy(), atol=2e-5, rtol=1e-5)


def test_a_sequence_past_the_held_rotary_tables_computes_its_own(monkeypatch) -> None:
    """onnxruntime folds the rotary tables for ``ROTARY_ROWS`` positions into constants; a
    longer sequence takes the branch that computes its own, which the stream proof covers
    once the tables are short."""
    monkeypatch.setattr(fused_graph, "ROTARY_ROWS", 8)
    config = resolve_config(get_registry(), "attention", GROUPED)
    report = export_layer(config, trials=1, form="fused").report
    assert report is not None and report.passed
    assert any("prompt=21 steps=21" in c.case for c in report.comparisons)


def test_wrong_tables_past_the_held_ones_fail_naming_the_step(monkeypatch) -> None:
    """Tables computed wrong for a sequence past the held ones (cos and sin swapped) fail
    the stream at the first step past the held positions, and it names that step."""
    monkeypatch.setattr(fused_graph, "ROTARY_ROWS", 8)
    tables = fused_graph._tables

    def swapped(prefix: str, *arguments: object) -> list[onnx.NodeProto]:
        nodes = tables(prefix, *arguments)  # type: ignore[arg-type]
        if "computed" in prefix:
            for node in nodes:
                if node.op_type in ("Cos", "Sin"):
                    node.op_type = "Sin" if node.op_type == "Cos" else "Cos"
        return nodes

    monkeypatch.setattr(fused_graph, "_tables", swapped)
    config = resolve_config(get_registry(), "attention", GROUPED)
    with pytest.raises(Exception) as failed:  # the class is checked by name
        export_layer(config, trials=1, form="fused")
    assert type(failed.value).__name__ == "VerificationFailed"
    report = failed.value.report  # type: ignore[attr-defined]
    decoding = [c.case for c in report.failures if c.case.startswith("decoding")]
    # Prompt 1 then 21 steps: positions 0 to 7 are held, position 8 is the first computed.
    assert any(
        "prompt=1 steps=21" in case and "first wrong at decode step 8 (position 8)" in case
        for case in decoding
    ), decoding


@pytest.mark.parametrize(
    ("params", "dtype", "message"),
    [
        (
            {},
            "float32",
            "layer 'attention' cannot be exported fused: onnxruntime's GroupQueryAttention "
            "rotates heads of a multiple of 16 features, not 8",
        ),
        (
            {**GROUPED, "causal": False},
            "float32",
            "layer 'attention' cannot be exported fused: onnxruntime's GroupQueryAttention is "
            "causal only",
        ),
        (
            GROUPED,
            "float64",
            "layer 'attention' cannot be exported fused: onnxruntime's GroupQueryAttention has "
            "CPU kernels for float32 and float16, not float64",
        ),
    ],
    ids=["head-dim-8", "not-causal", "float64"],
)
def test_a_layer_the_fused_form_cannot_compute_is_refused(
    params: dict[str, object], dtype: str, message: str
) -> None:
    config = resolve_config(get_registry(), "attention", params, dtype=dtype)
    with pytest.raises(UserInputError) as refused:
        export_layer(config, verify=False, form="fused")
    assert str(refused.value) == message


def test_an_unknown_form_is_refused_naming_the_forms() -> None:
    config = resolve_config(get_registry(), "attention", GROUPED)
    with pytest.raises(UserInputError) as refused:
        export_layer(config, verify=False, form="flash")
    assert str(refused.value) == (
        "layer 'attention' has the export forms standard, fused, not 'flash'"
    )


def test_inspect_shows_the_form(tmp_path: Path) -> None:
    config = resolve_config(get_registry(), "attention", GROUPED)
    path = tmp_path / "fused.onnx"
    path.write_bytes(export_layer(config, verify=False, form="fused").model_bytes)
    shown = CliRunner().invoke(layerport_cli, ["inspect", str(path)])
    assert shown.exit_code == 0, shown.output
    assert re.search(r"^form: +fused$", shown.output, re.MULTILINE)
    assert "com.microsoft.GroupQueryAttention 3" in shown.output


def test_a_composed_model_takes_the_form_in_each_block(tmp_path: Path) -> None:
    """A model file's decoder blocks export fused together; the file verifies on the grid."""
    caches = "".join(
        f'[inputs.past_{kind}_{index}]\ndtype = "float"\nshape = ["batch", 2, "past", 16]\n'
        for index in (0, 1)
        for kind in ("key", "value")
    )
    blocks = "".join(
        f'[[layer]]\nname = "block{index}"\nuse = "decoder_block"\n'
        "params = { embed_dim = 64, num_heads = 4, num_kv_heads = 2 }\n"
        f'input = {{ x = "{source}", past_key = "past_key_{index}", '
        f'past_value = "past_value_{index}" }}\n'
        for index, source in ((0, "x"), (1, "block0.y"))
    )
    path = tmp_path / "two.toml"
    path.write_text(
        '[model]\nname = "two-blocks"\n[inputs.x]\ndtype = "float"\n'
        'shape = ["batch", "seq", 64]\n'
        + caches
        + blocks
        + '[outputs]\ny = "block1.y"\n'
        + "".join(
            f'present_{kind}_{index} = "block{index}.present_{kind}"\n'
            for index in (0, 1)
            for kind in ("key", "value")
        )
    )
    config = resolve_config(get_registry(), str(path))
    result = export_layer(config, trials=1, form="fused")
    assert result.report is not None and result.report.passed
    assert result.record.form == "fused"
    ops = _ops(onnx.load_from_string(result.model_bytes).graph)
    assert ops.count("com.microsoft.GroupQueryAttention") == 6  # two blocks, three paths each
    assert ops.count("com.microsoft.SkipSimplifiedLayerNormalization") == 2


@pytest.mark.slow
def test_optimize_tries_the_fused_form_and_records_the_one_kept() -> None:
    """Which form is kept is the timing's call, so the test holds the rule, not a winner:
    the fused form verified and was timed; it is kept only if it beat the export by 3%
    and no other verified candidate ran faster still; the record names the form kept."""
    config = resolve_config(get_registry(), "decoder_block", GROUPED)
    result = export_layer(config, trials=1, optimize=True)
    optimization = result.record.optimization
    assert optimization is not None
    tried, kept = optimization["tried"], optimization["kept"]
    fused = tried["fused"]
    assert "median_ms" in fused, fused  # it verified, so it was timed
    if "refused" in fused:
        assert fused["refused"].startswith("it is not 3% faster"), fused
        assert kept != "fused"
    else:
        # Another rewrite (an optimizer level) may beat it on a given run; then that one is kept.
        assert kept is not None
        assert tried[kept]["median_ms"] <= fused["median_ms"]
    if kept is not None:
        faster = [
            entry["median_ms"]
            for entry in tried.values()
            if "median_ms" in entry and "refused" not in entry
        ]
        assert tried[kept]["median_ms"] == min(faster)
    assert result.record.form == ("fused" if kept == "fused" else "standard")
