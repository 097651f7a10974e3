"""layerport-recurrent: torch.nn.LSTM and torch.nn.RNN as layer types, stacked or bidirectional.

- ``lstm``: the same function as ``torch.nn.LSTM(batch_first=True)``;
- ``elman``: the same function as ``torch.nn.RNN(batch_first=True)``, without a head.

Both keep torch's own state-dict keys (``weight_ih_l0``, ``bias_hh_l1_reverse``)
and state layout (``num_layers x directions, batch, hidden_size``), so a trained
module's weights load as they are, and both read their sizes from those weights.
This module declares the specs and must stay torch-free: ``layerport list``
imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from layerport.plugin import (
    BATCH_AND_SEQ,
    OUTPUT_DIMS,
    PROJECTED_OUTPUT_DIMS,
    PROJECTED_STATE_DIMS,
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


def build_lstm(params: Params) -> nn.Module:
    from layerport_recurrent.module import LSTM

    return LSTM(**torch_layout_arguments(params), proj_size=int(params["proj_size"]))


def build_elman(params: Params) -> nn.Module:
    from layerport_recurrent.module import StackedElman

    return StackedElman(**torch_layout_arguments(params), nonlinearity=str(params["nonlinearity"]))


LSTM = LayerSpec(
    name="lstm",
    description="LSTM over a sequence, stacked or bidirectional: torch.nn.LSTM(batch_first=True).",
    build=build_lstm,
    params=(
        Param("input_size", int, 32, "features per time step", minimum=1),
        Param("hidden_size", int, 32, "size of each hidden state", minimum=1),
        Param("num_layers", int, 1, "stacked LSTM layers", minimum=1, maximum=16),
        Param("bidirectional", bool, False, "also run the sequence backwards"),
        Param("bias", bool, True, "learn the bias_ih and bias_hh vectors"),
        Param(
            "proj_size",
            int,
            0,
            "project h to this size with weight_hr (0: none); below hidden_size",
            minimum=0,
        ),
    ),
    dims=BATCH_AND_SEQ,
    inputs=(
        Tensor("x", ("batch", "seq", "input_size"), "input sequence"),
        Tensor(
            "h0", PROJECTED_STATE_DIMS, "initial hidden states; zeros if omitted", optional=True
        ),
        Tensor("c0", STATE_DIMS, "initial cell states; zeros if omitted", optional=True),
    ),
    outputs=(
        Tensor("y", PROJECTED_OUTPUT_DIMS, "last layer's h at every step"),
        Tensor("h_n", PROJECTED_STATE_DIMS, "hidden states after the last step"),
        Tensor("c_n", STATE_DIMS, "cell states after the last step"),
    ),
    # The backward direction needs the whole sequence, so a bidirectional LSTM cannot stream.
    streaming=Streaming(dim="seq", carry=(("h0", "h_n"), ("c0", "c_n")), unless="bidirectional"),
    **torch_layout_fields("LSTM"),
)


ELMAN = LayerSpec(
    name="elman",
    description="Elman RNN, stacked or bidirectional, without a head: torch.nn.RNN(batch_first=True).",
    build=build_elman,
    params=(
        Param("input_size", int, 32, "features per time step", minimum=1),
        Param("hidden_size", int, 32, "size of each hidden state", minimum=1),
        Param("num_layers", int, 1, "stacked layers", minimum=1, maximum=16),
        Param("nonlinearity", str, "tanh", "applied to the hidden state", choices=("tanh", "relu")),
        Param("bias", bool, True, "learn the bias_ih and bias_hh vectors"),
        Param("bidirectional", bool, False, "also run the sequence backwards"),
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
    streaming=Streaming(dim="seq", carry=(("h0", "h_n"),), unless="bidirectional"),
    **torch_layout_fields("RNN"),
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    register(LSTM)
    register(ELMAN)
