"""The built-in layer types against independent torch oracles holding the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from layerport.config import resolve_config
from layerport.eager.build import build_module, run_module
from layerport.plugins import get_registry

from conftest import run_process

DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOLERANCE = {"float32": 1e-5, "float64": 1e-12}


def configure(layer: str, dtype: str = "float32", seed: int = 0, **params: object):
    return resolve_config(get_registry(), layer, params=params, dtype=dtype, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["none", "sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_nn_linear(dtype: str, activation: str, bias: bool) -> None:
    config = configure("linear", dtype, activation=activation, bias=bias, in_features=5)
    module = build_module(config)
    oracle = nn.Linear(5, 2, bias=bias, dtype=DTYPES[dtype])
    oracle.load_state_dict(module.state_dict())
    act = {"none": lambda t: t, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
    x = torch.randn(9, 5, dtype=DTYPES[dtype])
    with torch.no_grad():
        expected = act[activation](oracle(x))
    actual = run_module(module, config, {"x": x.numpy()})["y"]
    np.testing.assert_allclose(actual, expected.numpy(), rtol=0, atol=TOLERANCE[dtype])
    assert actual.dtype == np.dtype(dtype)


def rnn_oracle(module: nn.Module, nonlinearity: str, bias: bool, dtype: torch.dtype):
    """torch.nn.RNN followed by torch.nn.Linear, with weights copied by name."""
    state = module.state_dict()
    rnn = nn.RNN(
        state["wi.weight"].shape[1],
        state["wi.weight"].shape[0],
        nonlinearity=nonlinearity,
        bias=bias,
        batch_first=True,
        dtype=dtype,
    )
    head = nn.Linear(
        state["wo.weight"].shape[1], state["wo.weight"].shape[0], bias=bias, dtype=dtype
    )
    rnn_state = {"weight_ih_l0": state["wi.weight"], "weight_hh_l0": state["wh.weight"]}
    if bias:
        rnn_state |= {"bias_ih_l0": state["wi.bias"], "bias_hh_l0": state["wh.bias"]}
        head.load_state_dict({"weight": state["wo.weight"], "bias": state["wo.bias"]})
    else:
        head.load_state_dict({"weight": state["wo.weight"]})
    rnn.load_state_dict(rnn_state)
    return rnn, head


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("nonlinearity", "bias"), [("tanh", True), ("relu", True), ("tanh", False)]
)
@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (3, 17), (8, 32)])
def test_rnn_matches_nn_rnn_then_linear(dtype, nonlinearity, bias, batch, seq) -> None:
    config = configure(
        "rnn",
        dtype,
        nonlinearity=nonlinearity,
        bias=bias,
        input_size=12,
        hidden_size=10,
        output_size=4,
    )
    module = build_module(config)
    rnn, head = rnn_oracle(module, nonlinearity, bias, DTYPES[dtype])
    x = torch.randn(batch, seq, 12, dtype=DTYPES[dtype])
    h0 = torch.randn(batch, 10, dtype=DTYPES[dtype])
    with torch.no_grad():
        hidden, h_n = rnn(x, h0.unsqueeze(0))
        expected_y = head(hidden)
    actual = run_module(module, config, {"x": x.numpy(), "h0": h0.numpy()})
    np.testing.assert_allclose(actual["y"], expected_y.numpy(), rtol=0, atol=TOLERANCE[dtype])
    np.testing.assert_allclose(actual["h_n"], h_n[0].numpy(), rtol=0, atol=TOLERANCE[dtype])


def test_rnn_h0_defaults_to_zeros() -> None:
    config = configure("rnn")
    module = build_module(config)
    x = np.random.default_rng(0).standard_normal((2, 5, 128)).astype(np.float32)
    without = run_module(module, config, {"x": x})
    with_zeros = run_module(module, config, {"x": x, "h0": np.zeros((2, 64), np.float32)})
    np.testing.assert_array_equal(without["y"], with_zeros["y"])


def test_rnn_keeps_no_state_between_calls() -> None:
    # The notebook kept hidden states in a list that grew across calls.
    config = configure("rnn")
    module = build_module(config)
    x = np.random.default_rng(1).standard_normal((2, 5, 128)).astype(np.float32)
    first = run_module(module, config, {"x": x})
    second = run_module(module, config, {"x": x})
    np.testing.assert_array_equal(first["y"], second["y"])


@pytest.mark.parametrize("layer", ["linear", "rnn"])
def test_spec_reference_agrees_with_the_module(layer: str) -> None:
    config = configure(layer, "float64")
    module = build_module(config)
    reference = config.spec.reference(module)
    shapes = {t.name: config.shape(t) for t in config.spec.inputs}
    inputs = [torch.randn(*shape, dtype=torch.float64) for shape in shapes.values()]
    with torch.no_grad():
        expected = reference(*inputs)
        actual = module(*inputs)

    def as_tuple(out):
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)

    for a, b in zip(as_tuple(actual), as_tuple(expected), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_seed_fixes_weights_and_changes_with_it() -> None:
    first = build_module(configure("rnn", seed=7)).state_dict()
    again = build_module(configure("rnn", seed=7)).state_dict()
    other = build_module(configure("rnn", seed=8)).state_dict()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["wh.weight"], other["wh.weight"])


def test_float64_weights_are_the_float32_draws_widened() -> None:
    narrow = build_module(configure("linear")).state_dict()["weight"]
    wide = build_module(configure("linear", "float64")).state_dict()["weight"]
    assert wide.dtype == torch.float64
    assert torch.equal(wide.float(), narrow)


def test_same_seed_same_outputs_across_processes(tmp_path) -> None:
    outputs = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.npz"
        result = run_process("run", "rnn", "--seed", "42", "--output", str(path), "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["seed"] == 42
        with np.load(path) as saved:
            outputs.append({key: saved[key] for key in saved.files})
    for key in ("y", "h_n"):
        np.testing.assert_array_equal(outputs[0][key], outputs[1][key])
