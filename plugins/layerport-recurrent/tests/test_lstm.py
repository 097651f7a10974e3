"""The built-in lstm against torch.nn.LSTM itself, holding the same weights.

The exported file runs in onnxruntime at batch sizes and lengths it was not
traced at, with h0 and c0 given and left out. The default run takes a pairwise
sample of the matrix (layers 1 to 3, both directions, bias or not, float32 and
float64); the full matrix is slow.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from layerport.plugin import build_module, export_layer, get_registry, load_model, resolve_config

MATRIX = list(itertools.product([1, 2, 3], [False, True], [True, False], ["float32", "float64"]))
# Every pair of values of any two factors appears at least once.
PAIRWISE = [
    (1, False, True, "float32"),
    (1, True, False, "float64"),
    (2, False, False, "float64"),
    (2, True, True, "float32"),
    (3, False, True, "float64"),
    (3, True, False, "float32"),
]


def _export(  # type: ignore[no-untyped-def]
    tmp_path: Path, num_layers: int, bidirectional: bool, bias: bool, dtype: str, proj_size: int = 0
):
    params = {
        "input_size": 6,
        "hidden_size": 5,
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "bias": bias,
        "proj_size": proj_size,
    }
    config = resolve_config(
        get_registry(), "lstm", params=params, dims={"batch": 3, "seq": 4}, dtype=dtype
    )
    result = export_layer(config, trials=1)
    path = tmp_path / "lstm.onnx"
    result.write(path)
    return config, result, path


def _check_against_nn_lstm(config, path: Path) -> None:  # type: ignore[no-untyped-def]
    module = build_module(config)
    reference = torch.nn.LSTM(
        6,
        5,
        num_layers=module.num_layers,
        bias=module.bias,
        batch_first=True,
        bidirectional=module.bidirectional,
        proj_size=module.proj_size,
        dtype=module.weight_ih_l0.dtype,
    )
    reference.load_state_dict(module.state_dict())
    session = load_model(path)
    states = module.num_layers * (2 if module.bidirectional else 1)
    tolerance = 1e-5 if config.dtype == "float32" else 1e-12
    rng = np.random.default_rng(1)
    for batch, seq in [(1, 1), (5, 17), (2, 40)]:  # never the traced 3 x 4
        x = rng.standard_normal((batch, seq, 6)).astype(config.dtype)
        h0 = rng.standard_normal((states, batch, module.proj_size or 5)).astype(config.dtype)
        c0 = rng.standard_normal((states, batch, 5)).astype(config.dtype)
        with torch.no_grad():
            y, (h_n, c_n) = reference(
                torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0))
            )
            y_zero, (h_zero, _) = reference(torch.from_numpy(x))
        given = session.run({"x": x, "h0": h0, "c0": c0})
        omitted = session.run({"x": x})
        np.testing.assert_allclose(given["y"], y.numpy(), atol=tolerance, rtol=tolerance)
        np.testing.assert_allclose(given["h_n"], h_n.numpy(), atol=tolerance, rtol=tolerance)
        np.testing.assert_allclose(given["c_n"], c_n.numpy(), atol=tolerance, rtol=tolerance)
        np.testing.assert_allclose(omitted["y"], y_zero.numpy(), atol=tolerance, rtol=tolerance)
        np.testing.assert_allclose(omitted["h_n"], h_zero.numpy(), atol=tolerance, rtol=tolerance)


def _form_and_dims_are_right(result, bidirectional: bool) -> None:  # type: ignore[no-untyped-def]
    import onnx

    model = onnx.load_model_from_string(result.model_bytes)
    ops = {node.op_type for node in model.graph.node}
    # float32 keeps the ONNX LSTM op; onnxruntime has no double LSTM kernel, so float64 is
    # Scan, and so is a projection, which the op does not have.
    uses_the_op = result.config.dtype == "float32" and not result.config.params["proj_size"]
    assert ("LSTM" in ops) == uses_the_op, ops
    assert ("Scan" in ops) != uses_the_op, ops
    for value in model.graph.output:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        assert "batch" in dims, (value.name, dims)
    y = next(value for value in model.graph.output if value.name == "y")
    assert [d.dim_param for d in y.type.tensor_type.shape.dim][:2] == ["batch", "seq"]
    assert result.size <= 1.1 * result.weight_bytes + 16 * 1024
    summary = result.report.summary()
    streaming = summary["streaming"]
    if bidirectional:
        assert streaming == "skipped: a layer with bidirectional=true cannot stream"
    else:
        assert streaming.startswith("seq=")


@pytest.mark.parametrize(("num_layers", "bidirectional", "bias", "dtype"), PAIRWISE)
def test_lstm_matches_nn_lstm_pairwise(tmp_path, num_layers, bidirectional, bias, dtype) -> None:
    config, result, path = _export(tmp_path, num_layers, bidirectional, bias, dtype)
    _form_and_dims_are_right(result, bidirectional)
    _check_against_nn_lstm(config, path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "bias", "dtype"), [c for c in MATRIX if c not in PAIRWISE]
)
def test_lstm_matches_nn_lstm_full_matrix(tmp_path, num_layers, bidirectional, bias, dtype) -> None:
    config, result, path = _export(tmp_path, num_layers, bidirectional, bias, dtype)
    _form_and_dims_are_right(result, bidirectional)
    _check_against_nn_lstm(config, path)


@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "bias", "dtype", "proj_size"),
    [(1, False, True, "float32", 3), (2, True, False, "float64", 2)],
)
def test_a_projecting_lstm_matches_nn_lstm(  # type: ignore[no-untyped-def]
    tmp_path, num_layers, bidirectional, bias, dtype, proj_size
) -> None:
    # nn.LSTM(proj_size=P): h = weight_hr @ (o * tanh(c)) is P wide, c stays hidden_size wide.
    config, result, path = _export(tmp_path, num_layers, bidirectional, bias, dtype, proj_size)
    _form_and_dims_are_right(result, bidirectional)
    _check_against_nn_lstm(config, path)


def test_the_node_count_does_not_depend_on_the_traced_length() -> None:
    counts = set()
    for seq in (3, 11):
        config = resolve_config(
            get_registry(), "lstm", params={"input_size": 4, "hidden_size": 3}, dims={"seq": seq}
        )
        counts.add(export_layer(config, verify=False).node_count)
    assert len(counts) == 1, counts
