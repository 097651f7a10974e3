"""The float64 verdict, on trained weights (tests/data, made by tests/data/train_weights.py).

A float32 file is judged against the layer in float64 by what eager float32
itself loses there (verify.verdict): the correct export of trained weights
passes at seq 301, and the same file with one weight changed by enough to move
the output 10x eager's own error fails, naming the grid point.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from hostile import assert_refused
from layerport.verify.verdict import FACTOR

DATA = Path(__file__).parent / "data"


def _changed_weights(tmp_path: Path, name: str, key: str, bump: float) -> Path:
    tensors = load_file(DATA / f"trained_{name}.safetensors")
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] += bump
    path = tmp_path / f"changed_{name}.safetensors"
    save_file(tensors, path)
    return path


def _float32_cost_and_shift(layer: str, weights: Path, changed: Path) -> tuple[float, float]:
    """float32 eager's own error against float64, and how far the change moves float64 eager."""
    from layerport.config import resolve_config
    from layerport.eager.build import build_module, run_module
    from layerport.plugins import get_registry

    outputs = {}
    for label, path, dtype in (
        ("own", weights, "float32"),
        ("exact", weights, "float64"),
        ("changed", changed, "float64"),
    ):
        config = resolve_config(
            get_registry(), layer, dims={"batch": 1, "seq": 301}, dtype=dtype, weights=path
        )
        inputs = config.with_dims(config.dims).random_inputs(0)
        inputs = {
            name: array.astype(np.float32).astype(config.dtype) for name, array in inputs.items()
        }
        outputs[label] = run_module(build_module(config), config, inputs)["y"].astype(np.float64)
    cost = float(np.abs(outputs["own"] - outputs["exact"]).max())
    return cost, float(np.abs(outputs["changed"] - outputs["exact"]).max())


@pytest.mark.slow
@pytest.mark.parametrize(("layer", "name"), [("gru", "gru"), ("lstm", "lstm")])
def test_trained_recurrent_exports_pass_and_a_changed_weight_fails(
    cli, tmp_path, layer: str, name: str
) -> None:
    weights = DATA / f"trained_{name}.safetensors"
    path = tmp_path / f"{name}.onnx"
    exported = cli("export", layer, "--weights", str(weights), "-o", str(path), "--trials", "1")
    assert exported.exit_code == 0, exported.stderr
    assert "export error" in exported.stdout and "against float64 eager" in exported.stdout

    # A weight changed by enough to move the output 10x float32 eager's own error.
    bump = 1e-4
    changed = _changed_weights(tmp_path, name, "weight_hh_l0", bump)
    cost, shift = _float32_cost_and_shift(layer, weights, changed)
    while shift < 10 * cost:
        bump *= 2
        changed = _changed_weights(tmp_path, name, "weight_hh_l0", bump)
        cost, shift = _float32_cost_and_shift(layer, weights, changed)
    assert 10 * cost > FACTOR * cost  # the rule leaves room below a 10x change
    # The file exported from the changed weights, verified against the original layer.
    import onnx

    from layerport.config import resolve_config
    from layerport.eager.build import build_module
    from layerport.pipeline import export_layer, verify_model
    from layerport.plugins import get_registry

    wrong = export_layer(resolve_config(get_registry(), layer, weights=changed), verify=False)
    config = resolve_config(get_registry(), layer, weights=weights)
    report = verify_model(
        config, build_module(config), onnx.load_from_string(wrong.model_bytes), trials=1
    )
    assert not report.passed
    # The message names the worst case's grid point; the longest sequence fails too.
    message = report.failure_message()
    assert re.search(r" at (streaming )?(batch=\d+ )?seq=\d+", message)
    assert "precision cost" in message
    assert any("seq=301" in comparison.case for comparison in report.failures)


def test_float16_conversion_reports_underflow_with_counts(cli, tmp_path) -> None:
    tensors = load_file(DATA / "trained_gru.safetensors")
    tensors["weight_hh_l0"].view(-1)[:3] = torch.tensor([1e-9, -1e-8, 2e-6])
    path = tmp_path / "tiny.safetensors"
    save_file(tensors, path)
    result = cli("run", "gru", "--weights", str(path), "--dtype", "float16", "--json")
    assert result.exit_code == 0, result.stderr
    note = next(line for line in result.stderr.splitlines() if "weight_hh_l0" in line)
    assert note.startswith("Note: converting to float16, weight_hh_l0: 2 of 6912 non-zero ")
    assert "values become 0 and" in note and "(smallest magnitude lost 1e-09)" in note


def test_explicit_tolerances_judge_element_by_element(cli) -> None:
    result = cli("verify", "linear", "--atol", "1e-5", "--trials", "1")
    assert result.exit_code == 0, result.stderr
    assert "atol 1e-05, rtol 0.0001" in result.stdout
    default = cli("verify", "linear", "--trials", "1")
    assert "export error against float64 within 4 x eager float32's own" in default.stdout


def test_save_failures_needs_a_file(cli, tmp_path) -> None:
    assert_refused(
        cli("verify", "linear", "--save-failures", str(tmp_path)),
        2,
        "--save-failures reruns a failure with 'layerport infer', which needs a file",
    )


def test_a_confident_classifier_is_judged_at_the_sigmoid_s_scale(cli, tmp_path) -> None:
    # Probabilities near 0: onnxruntime's Sigmoid is within 1.2e-7 of float64
    # everywhere but 0.09% off at 1e-5, where float32 eager is exact. Measured
    # at the value's own scale that would fail a correct file.
    torch.manual_seed(0)
    weight = torch.randn(2, 8) * 0.1
    save_file({"weight": weight, "bias": torch.full((2,), -11.5)}, tmp_path / "w.safetensors")
    result = cli("export", "linear", "--weights", str(tmp_path / "w.safetensors"),
                 "-p", "activation=sigmoid", "-o", str(tmp_path / "c.onnx"))  # fmt: skip
    assert result.exit_code == 0, result.stderr


def test_only_bounded_ops_outputs_get_the_unit_scale() -> None:
    from onnx import TensorProto, helper

    from layerport.verify.verdict import bounded_output_scales

    def graph(*ops: str) -> object:
        nodes = [helper.make_node(op, [f"v{i}"], [f"v{i + 1}"]) for i, op in enumerate(ops)]
        value = helper.make_tensor_value_info
        return helper.make_model(
            helper.make_graph(
                nodes,
                "g",
                [value("v0", TensorProto.FLOAT, [2])],
                [value(f"v{len(ops)}", TensorProto.FLOAT, [2])],
            )
        )

    assert bounded_output_scales(graph("Sigmoid", "Identity")) == {"v2": 1.0}
    assert bounded_output_scales(graph("Tanh")) == {"v1": 1.0}
    assert bounded_output_scales(graph("Sigmoid", "Relu")) == {}
    assert bounded_output_scales(graph("Exp")) == {}
