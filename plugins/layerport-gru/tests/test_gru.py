"""The gru layer type: layerport's conformance kit, and torch.nn.GRU as an independent oracle."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import onnx
import pytest
import torch
from layerport_gru import GRU
from torch import nn

from layerport.plugin import CHECKS, build_layer

DTYPES = {"float32": torch.float32, "float64": torch.float64}
ATOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_conformance(check: Callable[[str], None]) -> None:
    check("gru")


def build(dtype: torch.dtype = torch.float32, seed: int = 0, **params: object) -> nn.Module:
    return build_layer("gru", params, dtype=str(dtype).removeprefix("torch."), seed=seed)


def oracle(module: nn.Module) -> nn.GRU:
    """A fresh torch.nn.GRU holding a copy of the module's weights, under the same keys."""
    gru = nn.GRU(
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        bias=module.bias,
        batch_first=True,
        bidirectional=module.bidirectional,
        dtype=module.weight_ih_l0.dtype,
    )
    gru.load_state_dict({name: tensor.clone() for name, tensor in module.state_dict().items()})
    return gru.eval().requires_grad_(False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize(("num_layers", "bidirectional"), [(1, False), (2, True)])
@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (3, 17)])
def test_matches_nn_gru(
    dtype: str,
    bias: bool,
    with_h0: bool,
    num_layers: int,
    bidirectional: bool,
    batch: int,
    seq: int,
) -> None:
    module = build(
        DTYPES[dtype],
        bias=bias,
        input_size=12,
        hidden_size=10,
        num_layers=num_layers,
        bidirectional=bidirectional,
    )
    gru = oracle(module)
    directions = 2 if bidirectional else 1
    x = torch.randn(batch, seq, 12, dtype=DTYPES[dtype])
    h0 = torch.randn(num_layers * directions, batch, 10, dtype=DTYPES[dtype]) if with_h0 else None
    with torch.no_grad():
        y, h_n = module(x, h0)
        expected_y, expected_h_n = gru(x, h0)
    assert y.shape == (batch, seq, 10 * directions)
    assert h_n.shape == (num_layers * directions, batch, 10)
    torch.testing.assert_close(y, expected_y, rtol=0, atol=ATOL[dtype])
    torch.testing.assert_close(h_n, expected_h_n, rtol=0, atol=ATOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_export_runs_at_untraced_sizes_like_nn_gru(dtype: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from layerport.plugin import (
        build_module,
        export_layer,
        get_registry,
        load_model,
        resolve_config,
    )

    params = {"input_size": 6, "hidden_size": 5, "num_layers": 2, "bidirectional": True}
    config = resolve_config(
        get_registry(), "gru", params=params, dims={"batch": 3, "seq": 4}, dtype=dtype
    )
    result = export_layer(config, trials=1)
    path = tmp_path / "gru.onnx"
    result.write(path)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert ("GRU" in ops) == (dtype == "float32"), ops  # float64: Scan
    gru = oracle(build_module(config))
    x = np.random.default_rng(0).standard_normal((5, 23, 6)).astype(dtype)
    outputs = load_model(path).run({"x": x})
    with torch.no_grad():
        expected_y, expected_h_n = gru(torch.from_numpy(x))
    np.testing.assert_allclose(outputs["y"], expected_y.numpy(), atol=ATOL[dtype] * 10)
    np.testing.assert_allclose(outputs["h_n"], expected_h_n.numpy(), atol=ATOL[dtype] * 10)


def test_weights_are_nn_grus_under_the_same_seed() -> None:
    module = build(seed=7, input_size=5, hidden_size=6)
    torch.manual_seed(7)
    expected = nn.GRU(5, 6, batch_first=True).state_dict()
    actual = module.state_dict()
    assert actual.keys() == expected.keys()
    for name, tensor in actual.items():
        assert torch.equal(tensor, expected[name]), name


def test_chunks_carry_the_state() -> None:
    # What streaming relies on: h_n of one chunk, fed back as h0, continues the sequence.
    module = build(torch.float64, num_layers=2)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    with torch.no_grad():
        whole_y, whole_h_n = module(x)
        first_y, first_h_n = module(x[:, :4])
        second_y, second_h_n = module(x[:, 4:], first_h_n)
    torch.testing.assert_close(torch.cat([first_y, second_y], dim=1), whole_y)
    torch.testing.assert_close(second_h_n, whole_h_n)


def test_spec_reference_agrees_with_the_module() -> None:
    assert GRU.reference is not None
    module = build(torch.float64, num_layers=2, bidirectional=True)
    reference = GRU.reference(module)
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    h0 = torch.randn(4, 3, 48, dtype=torch.float64)
    with torch.no_grad():
        for arguments in ((x,), (x, h0)):
            for actual, expected in zip(module(*arguments), reference(*arguments), strict=True):
                torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_entry_point_registers_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "(entry_point,) = entry_points(group='layerport', name='gru')\n"
        "specs = []\n"
        "entry_point.load().register_layers(register=specs.append)\n"
        "assert [spec.name for spec in specs] == ['gru'], specs\n"
        "assert 'torch' not in sys.modules, 'registering gru imported torch'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
