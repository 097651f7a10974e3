"""The gru layer type: layerport's conformance kit, and torch.nn.GRU as an independent oracle."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from layerport_gru import GRU
from torch import nn

from layerport.testing import CHECKS, build_layer

DTYPES = {"float32": torch.float32, "float64": torch.float64}
ATOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_conformance(check: Callable[[str], None]) -> None:
    check("gru")


def build(dtype: torch.dtype = torch.float32, seed: int = 0, **params: object) -> nn.Module:
    return build_layer("gru", params, dtype=str(dtype).removeprefix("torch."), seed=seed)


def oracle(module: nn.Module) -> nn.GRU:
    """torch.nn.GRU holding a copy of the module's weights, renamed to nn.GRU's layer 0."""
    state = module.state_dict()
    hidden_size, input_size = state["weight_ih"].shape
    gru = nn.GRU(
        input_size,
        hidden_size // 3,
        bias="bias_ih" in state,
        batch_first=True,
        dtype=state["weight_ih"].dtype,
    )
    gru.load_state_dict({f"{name}_l0": tensor.clone() for name, tensor in state.items()})
    return gru.eval().requires_grad_(False)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no-h0"])
@pytest.mark.parametrize(("batch", "seq"), [(1, 1), (4, 1), (3, 17), (8, 64)])
def test_matches_nn_gru(dtype: str, bias: bool, with_h0: bool, batch: int, seq: int) -> None:
    module = build(DTYPES[dtype], bias=bias, input_size=12, hidden_size=10)
    gru = oracle(module)
    x = torch.randn(batch, seq, 12, dtype=DTYPES[dtype])
    h0 = torch.randn(batch, 10, dtype=DTYPES[dtype]) if with_h0 else None
    with torch.no_grad():
        y, h_n = module(x, h0)
        expected_y, expected_h_n = gru(x, None if h0 is None else h0.unsqueeze(0))
    assert y.shape == (batch, seq, 10) and h_n.shape == (batch, 10)
    torch.testing.assert_close(y, expected_y, rtol=0, atol=ATOL[dtype])
    torch.testing.assert_close(h_n, expected_h_n[0], rtol=0, atol=ATOL[dtype])


def test_weights_are_nn_grus_under_the_same_seed() -> None:
    module = build(seed=7, input_size=5, hidden_size=6)
    torch.manual_seed(7)
    expected = nn.GRU(5, 6, batch_first=True).state_dict()
    actual = module.state_dict()
    assert actual.keys() == {name.removesuffix("_l0") for name in expected}
    for name, tensor in actual.items():
        assert torch.equal(tensor, expected[f"{name}_l0"]), name


def test_chunks_carry_the_state() -> None:
    # What streaming relies on: h_n of one chunk, fed back as h0, continues the sequence.
    module = build(torch.float64)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    with torch.no_grad():
        whole_y, whole_h_n = module(x)
        first_y, first_h_n = module(x[:, :4])
        second_y, second_h_n = module(x[:, 4:], first_h_n)
    torch.testing.assert_close(torch.cat([first_y, second_y], dim=1), whole_y)
    torch.testing.assert_close(second_h_n, whole_h_n)


def test_spec_reference_agrees_with_the_module() -> None:
    assert GRU.reference is not None
    module = build(torch.float64)
    reference = GRU.reference(module)
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    h0 = torch.randn(3, 48, dtype=torch.float64)
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
