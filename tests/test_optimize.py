"""``export --optimize`` (issue 25): an optimized form is kept only when it proves itself.

The oracle for "proves itself" is the same grid verification every export
passes; the tests below feed it rewrites that are wrong on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from layerport.export import optimize


def _record(path: Path) -> dict[str, object]:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(props["layerport.optimization"])


@pytest.mark.parametrize("layer", ["linear", "rnn"])
def test_optimize_keeps_only_a_verified_faster_form(cli, tmp_path: Path, layer: str) -> None:
    out = tmp_path / f"{layer}.onnx"
    result = cli("export", layer, "--optimize", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert "optimized:" in result.stdout
    summary = _record(out)
    assert set(summary["tried"]) == set(optimize.OPTIMIZERS)
    kept = summary["kept"]
    if kept is not None:  # no slower than the export, measured side by side
        assert summary["tried"][kept]["median_ms"] < summary["before"]["median_ms"]
        assert onnx.load(str(out)).graph.node  # and it is the file written
    verified = cli("verify", str(out))
    assert verified.exit_code == 0, verified.stderr


def _pinning(model: onnx.ModelProto) -> onnx.ModelProto:
    """A rewrite that folds the batch dim at its traced size, as a careless simplifier does."""
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 16
    return model


def _wrong(model: onnx.ModelProto) -> onnx.ModelProto:
    """A rewrite that keeps the interface and changes a result: a bias doubled."""
    for initializer in model.graph.initializer:
        if initializer.name.endswith("bias"):
            array = onnx.numpy_helper.to_array(initializer) * 2
            initializer.CopyFrom(onnx.numpy_helper.from_array(array, initializer.name))
    return model


def _broken(model: onnx.ModelProto) -> onnx.ModelProto:
    raise ValueError("this optimizer crashed")


def test_a_rewrite_that_pins_a_dim_or_changes_a_result_is_refused(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(optimize, "OPTIMIZERS", ("pinning", "wrong", "broken"))
    monkeypatch.setitem(optimize._OPTIMIZERS, "pinning", _pinning)
    monkeypatch.setitem(optimize._OPTIMIZERS, "wrong", _wrong)
    monkeypatch.setitem(optimize._OPTIMIZERS, "broken", _broken)
    out = tmp_path / "linear.onnx"
    result = cli("export", "linear", "--optimize", "-o", str(out))
    assert result.exit_code == 0, result.stderr
    assert "kept the export as it is" in result.stdout
    tried = _record(out)["tried"]
    assert tried["pinning"]["refused"] == "it pins dim batch of input x (axis 0) to 16"
    assert tried["wrong"]["refused"].startswith("it fails verification: verification failed")
    assert tried["broken"]["refused"] == "broken failed: this optimizer crashed"
    assert _record(out)["kept"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimize", "--no-verify"], "--optimize keeps an optimized form only when it verifies"),
        (["--optimize", "--quantize", "int8"], "drop --no-verify and --quantize"),
        (["--runtimes", "ort"], "--runtimes applies to --optimize's verification; add --optimize"),
    ],
)
def test_optimize_needs_a_verified_float_export(cli, args: list[str], message: str) -> None:
    result = cli("export", "linear", *args)
    assert result.exit_code == 2
    assert message in result.stderr
