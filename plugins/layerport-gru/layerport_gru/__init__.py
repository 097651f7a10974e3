"""The ``gru`` layer type: the same function as ``torch.nn.GRU(batch_first=True)``.

Stacked (``num_layers``) and bidirectional, with ``nn.GRU``'s own state-dict
keys (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) and its state layout,
``(num_layers x directions, batch, hidden_size)``, so a trained ``nn.GRU``'s
weights load as they are, sizes included. Version 0.2.0 changed the contract:
0.1.0's keys had no ``_l0`` and its ``h0`` was ``(batch, hidden_size)``. This
module only declares the spec and must stay torch-free: ``layerport list``
imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from layerport.plugin import (
    BATCH_AND_SEQ,
    OUTPUT_DIMS,
    STATE_DIMS,
    LayerSpec,
    Param,
    Params,
    Streaming,
    Tensor,
    hookimpl,
    torch_layout_arguments,
    torch_layout_fields,
)

if TYPE_CHECKING:
    from torch import nn


def build_gru(params: Params) -> nn.Module:
    from layerport_gru.module import GRU

    return GRU(**torch_layout_arguments(params))


GRU = LayerSpec(
    name="gru",
    description="Gated recurrent unit, stacked or bidirectional: torch.nn.GRU(batch_first=True).",
    build=build_gru,
    params=(
        Param("input_size", int, 32, "features per time step", minimum=1),
        Param("hidden_size", int, 48, "size of each hidden state", minimum=1),
        Param("num_layers", int, 1, "stacked GRU layers", minimum=1, maximum=16),
        Param("bidirectional", bool, False, "also run the sequence backwards"),
        Param("bias", bool, True, "learn the biases bias_ih and bias_hh"),
    ),
    dims=BATCH_AND_SEQ,
    inputs=(
        Tensor("x", ("batch", "seq", "input_size"), "input sequence"),
        Tensor("h0", STATE_DIMS, "initial hidden states; zeros if omitted", optional=True),
    ),
    outputs=(
        Tensor("y", OUTPUT_DIMS, "last layer's h at every step"),
        Tensor("h_n", STATE_DIMS, "hidden states after the last step"),
    ),
    # The backward direction needs the whole sequence, so a bidirectional GRU cannot stream.
    streaming=Streaming(dim="seq", carry=(("h0", "h_n"),), unless="bidirectional"),
    **torch_layout_fields("GRU"),
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(GRU)
