"""The mlp layer type: layerport's conformance kit, and torch.nn.functional as an independent oracle."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from layerport_mlp import MLP
from torch import nn
from torch.nn import functional

from layerport.plugin import CHECKS, build_layer

DTYPES = {"float32": torch.float32, "float64": torch.float64}
ATOL = {"float32": 1e-5, "float64": 1e-12}
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": functional.silu,
    "relu": functional.relu,
    "tanh": torch.tanh,
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_conformance(check: Callable[[str], None]) -> None:
    check("mlp")


def build(dtype: torch.dtype = torch.float32, **params: object) -> nn.Module:
    return build_layer("mlp", params, dtype=str(dtype).removeprefix("torch."))


def randomize(module: nn.Module) -> dict[str, torch.Tensor]:
    """Replace every weight with random values, so LayerNorm's ones and zeros hide no mix-up."""
    state = {name: torch.randn_like(tensor) for name, tensor in module.state_dict().items()}
    module.load_state_dict(state)
    return state


def oracle(state: dict[str, torch.Tensor], activation: str, eps: float, x: torch.Tensor):
    """The block written out in torch.nn.functional, from the weights by name."""
    hidden = functional.linear(x, state["fc1.weight"], state["fc1.bias"])
    hidden = functional.layer_norm(
        hidden, hidden.shape[-1:], state["norm.weight"], state["norm.bias"], eps
    )
    hidden = ACTIVATIONS[activation](hidden)
    return functional.linear(hidden, state["fc2.weight"], state["fc2.bias"])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("eps", [1e-5, 1e-1])
@pytest.mark.parametrize(("batch", "tokens"), [(1, 1), (2, 7), (37, 53)])
def test_matches_functional(dtype: str, activation: str, eps: float, batch: int, tokens: int):
    module = build(
        DTYPES[dtype],
        activation=activation,
        eps=eps,
        in_features=6,
        hidden_features=20,
        out_features=3,
    )
    state = randomize(module)
    x = torch.randn(batch, tokens, 6, dtype=DTYPES[dtype])
    with torch.no_grad():
        y = module(x)
    assert y.shape == (batch, tokens, 3) and y.dtype == DTYPES[dtype]
    torch.testing.assert_close(y, oracle(state, activation, eps, x), rtol=0, atol=ATOL[dtype])


def test_tokens_are_independent() -> None:
    # Why tokens can be a dynamic dim: no token sees another.
    module = build(torch.float64)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        whole = module(x)
        one_by_one = torch.cat([module(x[:, t : t + 1]) for t in range(9)], dim=1)
    torch.testing.assert_close(one_by_one, whole, rtol=0, atol=1e-12)


def test_spec_reference_agrees_with_the_module() -> None:
    assert MLP.reference is not None
    module = build(torch.float64, activation="tanh", eps=1e-3)
    randomize(module)
    x = torch.randn(3, 11, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), MLP.reference(module)(x), rtol=0, atol=1e-12)


def test_entry_point_registers_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "(entry_point,) = entry_points(group='layerport', name='mlp')\n"
        "specs = []\n"
        "entry_point.load().register_layers(register=specs.append)\n"
        "assert [spec.name for spec in specs] == ['mlp'], specs\n"
        "assert 'torch' not in sys.modules, 'registering mlp imported torch'\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
