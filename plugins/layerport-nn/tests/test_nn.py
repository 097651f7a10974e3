"""layerport-nn's layers against torch's own modules, holding the same weights.

Layers with weights are exported from a checkpoint of torch's module (its keys
as torch names them, every size read from the tensors), and the file runs in
onnxruntime at sizes it was not traced at; weightless layers are exported with
their parameters and compared with the torch module built independently.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from layerport_nn import SPECS
from torch import nn
from torch.nn import functional

from layerport.plugin import (
    CHECKS,
    build_layer,
    get_registry,
    load_model,
    resolve_config,
    run_layer,
)
from layerport.plugin import cli as layerport_cli

LAYERS = [spec.name for spec in SPECS]


def _cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(layerport_cli, list(args))


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("layer", LAYERS)
def test_conformance(check: Callable[[str], None], layer: str) -> None:
    check(layer)


def _randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every floating-point tensor random, so no ones and zeros hide a mixed-up weight."""
    generator = torch.Generator().manual_seed(seed)
    state = module.state_dict()
    for name, tensor in state.items():
        if tensor.is_floating_point():
            values = torch.rand(tensor.shape, generator=generator) + 0.5
            state[name] = values if "var" in name or name == "weight" else values - 1.0
    module.load_state_dict(state)
    return module.eval()


def _export(tmp_path: Path, layer: str, module: nn.Module | None, *flags: str) -> Path:
    """Export ``layer``, from ``module``'s checkpoint if given; the file's path."""
    path = tmp_path / f"{layer}.onnx"
    weights: list[str] = []
    if module is not None:
        checkpoint = tmp_path / f"{layer}.pt"
        torch.save(module.state_dict(), checkpoint)
        weights = ["--weights", str(checkpoint)]
    result = _cli("export", layer, *weights, *flags, "-o", str(path), "--trials", "1")
    assert result.exit_code == 0, result.output
    return path


def _params(path: Path) -> dict[str, object]:
    described = json.loads(_cli("inspect", str(path), "--json").output)
    params: dict[str, object] = described["layerport"]["params"]
    return params


def _normal(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _expected(module: Callable[..., torch.Tensor], *arrays: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(*(torch.from_numpy(array) for array in arrays)).numpy()


def test_embedding_reads_its_sizes_from_the_checkpoint_and_matches_nn_embedding(
    tmp_path,
) -> None:
    oracle = _randomized(nn.Embedding(37, 5, padding_idx=3))
    path = _export(tmp_path, "embedding", oracle, "-p", "padding_idx=3")
    assert _params(path) == {"num_embeddings": 37, "embedding_dim": 5, "padding_idx": 3}
    ids = np.random.default_rng(0).integers(0, 37, (3, 41))
    ids[0, :4] = [0, 3, 36, 3]  # the first row, the padding row, the last row
    y = load_model(path).run({"ids": ids})["y"]
    np.testing.assert_array_equal(y, _expected(oracle, ids))


def test_embedding_refuses_ids_beyond_the_table(tmp_path) -> None:
    path = _export(tmp_path, "embedding", None)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([[1, 20]]))
    result = _run("infer", str(path), "--input", f"ids={ids}")
    assert result.returncode == 2
    assert result.stderr == "Error: input ids holds 20 at [0, 1]; its values must be from 0 to 19\n"
    refused = _run("run", "embedding", "-p", "padding_idx=20")
    assert refused.returncode == 2
    assert "padding_idx=20 is not a row of the table (num_embeddings=20)" in refused.stderr


@pytest.mark.parametrize(
    ("layer", "oracle", "flags"),
    [
        ("layernorm", nn.LayerNorm(12, eps=1e-3), ("-p", "eps=0.001")),
        ("layernorm", nn.LayerNorm(12, bias=False), ()),
        ("rmsnorm", nn.RMSNorm(12, eps=1e-5), ("-p", "eps=0.00001")),
    ],
    ids=["layernorm", "layernorm-no-bias", "rmsnorm"],
)
def test_norms_match_torch_at_untraced_lengths(tmp_path, layer, oracle, flags) -> None:
    oracle = _randomized(oracle)
    path = _export(tmp_path, layer, oracle, *flags)
    assert _params(path)["features"] == 12
    x = _normal(3, 29, 12)
    y = load_model(path).run({"x": x})["y"]
    np.testing.assert_allclose(y, _expected(oracle, x), atol=2e-6)


@pytest.mark.parametrize(
    ("layer", "oracle"),
    [("layernorm", nn.LayerNorm(12)), ("rmsnorm", nn.RMSNorm(12, eps=1e-6))],
    ids=["layernorm", "rmsnorm"],
)
def test_float16_norms_compute_in_float32_as_transformers_does(tmp_path, layer, oracle) -> None:
    """A float16 norm of hidden states in the hundreds (a trained transformer's outliers):
    their squares pass float16's 65504, so a norm computed in float16 would give zeros or
    NaN; the file must match torch's float32 norm of the same float16 values."""
    oracle = _randomized(oracle)
    path = _export(tmp_path, layer, oracle, "--dtype", "float16")
    x = (_normal(3, 29, 12) * 300).astype(np.float16)
    y = load_model(path).run({"x": x})["y"]
    assert y.dtype == np.float16 and np.isfinite(y).all()
    np.testing.assert_allclose(y, _expected(oracle, x.astype(np.float32)), atol=4e-3, rtol=4e-3)


def _trained_batchnorm(norm: nn.Module, *shape: int) -> nn.Module:
    """Running statistics from a few training steps, as a checkpoint holds them."""
    norm.train()
    with torch.no_grad():
        for step in range(3):
            norm(torch.randn(*shape) * (step + 2) + step)
        if norm.weight is not None:  # a learned scale and shift, not ones and zeros
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return norm.eval()


@pytest.mark.parametrize(
    ("layer", "oracle", "shape"),
    [
        ("batchnorm1d", _trained_batchnorm(nn.BatchNorm1d(5), 8, 5, 10), (3, 5, 29)),
        (
            "batchnorm2d",
            _trained_batchnorm(nn.BatchNorm2d(3, affine=False), 4, 3, 6, 6),
            (2, 3, 11, 7),
        ),
    ],
    ids=["batchnorm1d", "batchnorm2d-no-affine"],
)
def test_batchnorm_normalizes_by_the_checkpoints_running_statistics(
    tmp_path, layer, oracle, shape
) -> None:
    assert oracle.num_batches_tracked.dtype == torch.int64  # loaded as it is
    path = _export(tmp_path, layer, oracle)
    params = _params(path)
    assert params["num_features"] == shape[1]
    assert params["affine"] == (oracle.weight is not None)
    x = _normal(*shape)
    y = load_model(path).run({"x": x})["y"]
    np.testing.assert_allclose(y, _expected(oracle, x), atol=2e-6)


def test_a_float_step_counter_is_refused(tmp_path) -> None:
    state = nn.BatchNorm1d(4).state_dict()
    state["num_batches_tracked"] = torch.tensor(3.0)
    checkpoint = tmp_path / "bn.pt"
    torch.save(state, checkpoint)
    result = _run("run", "batchnorm1d", "--weights", str(checkpoint))
    assert result.returncode == 2
    assert "num_batches_tracked is float32, not an integer" in result.stderr


def activation_oracle(function: str, axis: int = 1) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.nn.functional's ``function``; softmax's over ``axis``."""
    functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": functional.relu,
        "leaky_relu": lambda x: functional.leaky_relu(x, 0.2),
        "gelu": functional.gelu,
        "silu": functional.silu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "softmax": lambda x: functional.softmax(x, dim=axis),
        "log_softmax": lambda x: functional.log_softmax(x, dim=axis),
    }
    return functions[function]


@pytest.mark.parametrize(
    "function", ["relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "softmax", "log_softmax"]
)
def test_activations_match_torch_functional(tmp_path, function: str) -> None:
    # softmax and log_softmax over seq, the dynamic dim: the file normalizes over any length.
    flags = ("-p", f"function={function}", "-p", "dim=seq", "-p", "negative_slope=0.2")
    path = _export(tmp_path, "activation", None, *flags)
    x = _normal(3, 29, 16) * 4
    y = load_model(path).run({"x": x})["y"]
    np.testing.assert_allclose(y, _expected(activation_oracle(function), x), atol=2e-6)


def test_gelu_has_no_float64_runtime(tmp_path) -> None:
    # onnxruntime has no float64 Erf kernel, and onnx's reference evaluator
    # computes Erf in float32: a float64 GELU cannot be verified, so it fails.
    result = _run(
        "export", "activation", "-p", "function=gelu", "--dtype", "float64",
        "-o", str(tmp_path / "gelu.onnx"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "it has no float64 kernel for Erf" in result.stderr


def test_dropout_is_the_identity_at_inference(tmp_path) -> None:
    path = _export(tmp_path, "dropout", None, "-p", "p=0.5")
    x = _normal(2, 31, 16)
    np.testing.assert_array_equal(load_model(path).run({"x": x})["y"], x)


POOLS = [
    ("maxpool1d", {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2}, (3, 4, 45)),
    ("maxpool2d", {"kernel_size": 3, "stride": 1, "padding": 1}, (2, 4, 13, 9)),
    ("avgpool1d", {"kernel_size": 4, "stride": 3, "padding": 2}, (3, 4, 44)),
    (
        "avgpool2d",
        {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
        (2, 4, 15, 8),
    ),
]


def _pool_oracle(layer: str, params: dict[str, object]) -> nn.Module:
    pools: dict[str, type[nn.Module]] = {
        "maxpool1d": nn.MaxPool1d,
        "maxpool2d": nn.MaxPool2d,
        "avgpool1d": nn.AvgPool1d,
        "avgpool2d": nn.AvgPool2d,
    }
    return pools[layer](**params)


@pytest.mark.parametrize(("layer", "params", "shape"), POOLS, ids=[pool[0] for pool in POOLS])
def test_pools_match_torch_at_untraced_lengths(tmp_path, layer, params, shape) -> None:
    flags = [word for name, value in params.items() for word in ("-p", f"{name}={value}")]
    path = _export(tmp_path, layer, None, *[str(flag).lower() for flag in flags])
    oracle = _pool_oracle(layer, params)
    session = load_model(path)
    for size in (shape[-1], shape[-1] + 7):
        x = _normal(*shape[:-1], size)
        expected = _expected(oracle, x)
        y = session.run({"x": x})["y"]
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, atol=2e-6)


@pytest.mark.parametrize(("layer", "params", "shape"), POOLS, ids=[pool[0] for pool in POOLS])
def test_the_pools_reference_agrees_with_torch(layer, params, shape) -> None:
    spec = get_registry().resolve(layer).spec
    assert spec.reference is not None
    module = build_layer(layer, {**params, "channels": 4})
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(spec.reference(module)(x), _pool_oracle(layer, params)(x))


def test_pool_padding_beyond_half_the_kernel_is_refused() -> None:
    result = _run("run", "maxpool2d", "-p", "kernel_size=2", "-p", "padding=2")
    assert result.returncode == 2
    assert "padding=2 must be at most half the kernel (kernel_size=2)" in result.stderr


def test_flatten_matches_nn_flatten_with_a_derived_row_length(tmp_path) -> None:
    path = _export(tmp_path, "flatten", None, "-p", "channels=3")
    x = _normal(2, 3, 7, 9)
    y = load_model(path).run({"x": x})["y"]
    np.testing.assert_array_equal(y, _expected(nn.Flatten(), x))
    shown = json.loads(_cli("show", "flatten", "--json").output)
    assert shown["outputs"][0]["dims_text"] == "batch* x channels * height * width"


def test_lstm_cell_streams_step_by_step_like_nn_lstm_cell(tmp_path) -> None:
    oracle = _randomized(nn.LSTMCell(6, 9))
    path = _export(tmp_path, "lstm_cell", oracle)
    assert _params(path) == {"input_size": 6, "hidden_size": 9, "bias": True}
    session = load_model(path)
    xs = _normal(5, 7, 6)  # 5 steps, batch 7 (traced at 4)
    h = c = np.zeros((7, 9), dtype=np.float32)
    state = (torch.zeros(7, 9), torch.zeros(7, 9))
    for step, x in enumerate(xs):
        outputs = session.run({"x": x} if step == 0 else {"x": x, "h0": h, "c0": c})
        h, c = outputs["h1"], outputs["c1"]
        with torch.no_grad():
            state = oracle(torch.from_numpy(x), state)
        np.testing.assert_allclose(h, state[0].numpy(), atol=2e-6)
        np.testing.assert_allclose(c, state[1].numpy(), atol=2e-6)


def test_gru_cell_streams_step_by_step_like_nn_gru_cell(tmp_path) -> None:
    oracle = _randomized(nn.GRUCell(6, 9, bias=False))
    path = _export(tmp_path, "gru_cell", oracle)
    assert _params(path) == {"input_size": 6, "hidden_size": 9, "bias": False}
    session = load_model(path)
    h = np.zeros((7, 9), dtype=np.float32)
    state = torch.zeros(7, 9)
    for x in _normal(5, 7, 6):
        h = session.run({"x": x, "h0": h})["h1"]
        with torch.no_grad():
            state = oracle(torch.from_numpy(x), state)
        np.testing.assert_allclose(h, state.numpy(), atol=2e-6)


def test_cells_read_torchs_keys_under_a_prefix_and_stream_20_steps(tmp_path) -> None:
    """A checkpoint of a model holding an LSTMCell and a GRUCell, each under its own prefix."""
    lstm, gru = _randomized(nn.LSTMCell(6, 9), seed=1), _randomized(nn.GRUCell(5, 7), seed=2)
    checkpoint = tmp_path / "cells.pt"
    state = {f"encoder.cell.{key}": value for key, value in lstm.state_dict().items()}
    state |= {f"decoder.gru.{key}": value for key, value in gru.state_dict().items()}
    torch.save(state, checkpoint)
    # Without a prefix: refused, naming the one prefix that holds an LSTMCell (not the GRU's).
    unprefixed = _run("run", "lstm_cell", "--weights", str(checkpoint))
    assert unprefixed.returncode == 2
    assert unprefixed.stderr.strip().endswith(
        "the file holds them under 'encoder.cell.': select them with --weights-prefix encoder.cell."
    )
    wrong = _run(
        "run", "lstm_cell", "--weights", str(checkpoint), "--weights-prefix", "decoder.gru."
    )
    assert wrong.returncode == 2
    assert wrong.stderr == (
        "Error: weight_hh has shape (21, 7): not a torch.nn.LSTMCell's, "
        "which is (4 * hidden_size, hidden_size)\n"
    )
    path = _export(tmp_path, "lstm_cell", None, "--weights", str(checkpoint),
                   "--weights-prefix", "encoder.cell.")  # fmt: skip
    assert _params(path) == {"input_size": 6, "hidden_size": 9, "bias": True}
    gru_path = _export(tmp_path, "gru_cell", None, "--weights", str(checkpoint),
                       "--weights-prefix", "decoder.gru.")  # fmt: skip
    assert _params(gru_path) == {"input_size": 5, "hidden_size": 7, "bias": True}
    # 20 steps, batch 3 (traced at 4): each step's h1 and c1 fed back as h0 and c0.
    session = load_model(path)
    xs = _normal(20, 3, 6, seed=7)
    state = session.run({"x": xs[0]})
    expected = lstm(torch.from_numpy(xs[0]))
    for step, x in enumerate(xs):
        if step:
            state = session.run({"x": x, "h0": state["h1"], "c0": state["c1"]})
            with torch.no_grad():
                expected = lstm(torch.from_numpy(x), expected)
        np.testing.assert_allclose(state["h1"], expected[0].detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(state["c1"], expected[1].detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("layer", ["embedding", "layernorm", "rmsnorm", "batchnorm1d", "batchnorm2d",
                                   "activation", "dropout", "flatten", "lstm_cell", "gru_cell"])  # fmt: skip
def test_spec_reference_agrees_with_the_module(layer: str) -> None:
    config = resolve_config(get_registry(), layer, dtype="float64", dims={"batch": 3})
    module = build_layer(layer, dtype="float64")
    spec = config.spec
    assert spec.reference is not None
    inputs = config.random_inputs(include_optional=True)
    arguments = [torch.from_numpy(inputs[tensor.name]) for tensor in spec.inputs]
    with torch.no_grad():
        ours = module(*arguments)
        theirs = spec.reference(module)(*arguments)
    for mine, reference in zip(
        ours if isinstance(ours, tuple) else (ours,),
        theirs if isinstance(theirs, tuple) else (theirs,),
        strict=True,
    ):
        torch.testing.assert_close(mine, reference, rtol=0, atol=1e-12)
    assert run_layer(config, inputs)  # and layerport runs it on the same inputs


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layerport", *args], capture_output=True, text=True
    )


def test_entry_point_registers_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "(entry_point,) = entry_points(group='layerport', name='nn')\n"
        "specs = []\n"
        "entry_point.load().register_layers(register=specs.append)\n"
        f"assert len(specs) == {len(SPECS)}, specs\n"
        "assert 'torch' not in sys.modules, 'registering layerport-nn imported torch'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
