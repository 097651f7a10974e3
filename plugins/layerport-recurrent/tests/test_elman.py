"""The built-in elman against torch.nn.RNN itself, holding the same weights.

torch.onnx unrolls a stacked or bidirectional nn.RNN and pins its length; the
elman exports through Scan, and its file runs at lengths it was never traced at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from layerport.plugin import build_module, export_layer, get_registry, load_model, resolve_config

CASES = [
    (1, False, "tanh", True, "float32"),
    (2, True, "relu", False, "float32"),
    (3, True, "tanh", True, "float64"),
]


@pytest.mark.parametrize(("num_layers", "bidirectional", "nonlinearity", "bias", "dtype"), CASES)
def test_elman_matches_nn_rnn(
    tmp_path: Path, num_layers: int, bidirectional: bool, nonlinearity: str, bias: bool, dtype: str
) -> None:
    params = {
        "input_size": 4,
        "hidden_size": 3,
        "num_layers": num_layers,
        "bidirectional": bidirectional,
        "nonlinearity": nonlinearity,
        "bias": bias,
    }
    config = resolve_config(
        get_registry(), "elman", params=params, dims={"batch": 2, "seq": 5}, dtype=dtype
    )
    result = export_layer(config, trials=1)
    model = onnx.load_model_from_string(result.model_bytes)
    assert "Scan" in {node.op_type for node in model.graph.node}
    path = tmp_path / "elman.onnx"
    result.write(path)
    module = build_module(config)
    reference = torch.nn.RNN(
        4, 3, num_layers=num_layers, nonlinearity=nonlinearity, bias=bias, batch_first=True,
        bidirectional=bidirectional, dtype=module.weight_ih_l0.dtype,
    )  # fmt: skip
    reference.load_state_dict(module.state_dict())
    session = load_model(path)
    tolerance = 1e-5 if dtype == "float32" else 1e-12
    directions = 2 if bidirectional else 1
    rng = np.random.default_rng(3)
    for batch, seq in [(1, 1), (4, 23)]:
        x = rng.standard_normal((batch, seq, 4)).astype(dtype)
        h0 = rng.standard_normal((num_layers * directions, batch, 3)).astype(dtype)
        with torch.no_grad():
            y, h_n = reference(torch.from_numpy(x), torch.from_numpy(h0))
            y_zero, _ = reference(torch.from_numpy(x))
        given, omitted = session.run({"x": x, "h0": h0}), session.run({"x": x})
        np.testing.assert_allclose(given["y"], y.numpy(), atol=tolerance, rtol=tolerance)
        np.testing.assert_allclose(given["h_n"], h_n.numpy(), atol=tolerance, rtol=tolerance)
        np.testing.assert_allclose(omitted["y"], y_zero.numpy(), atol=tolerance, rtol=tolerance)
