"""layerport-nn: the ``torch.nn`` layers real models are built from, as layer types.

Each layer type is torch's own module (or a thin subclass that names its state
inputs), so a trained checkpoint's keys load as they are and every size the
weights tell is read from them (``params_from_weights``). This package only
declares specs and must stay torch-free: ``layerport list`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable

from layerport.plugin import LayerSpec, hookimpl
from layerport_nn.activations import (
    ACTIVATION,
    ACTIVATION0D,
    ACTIVATION1D,
    ACTIVATION2D,
    DROPOUT,
)
from layerport_nn.cells import GRU_CELL, LSTM_CELL
from layerport_nn.embedding import EMBEDDING
from layerport_nn.flatten import FLATTEN
from layerport_nn.norms import BATCHNORM1D, BATCHNORM2D, LAYERNORM, RMSNORM
from layerport_nn.padding import PADS
from layerport_nn.pooling import AVGPOOL1D, AVGPOOL2D, MAXPOOL1D, MAXPOOL2D
from layerport_nn.reshape import RESHAPES

SPECS = (
    EMBEDDING,
    LAYERNORM,
    RMSNORM,
    ACTIVATION,
    ACTIVATION0D,
    ACTIVATION1D,
    ACTIVATION2D,
    DROPOUT,
    BATCHNORM1D,
    BATCHNORM2D,
    MAXPOOL1D,
    MAXPOOL2D,
    AVGPOOL1D,
    AVGPOOL2D,
    FLATTEN,
    LSTM_CELL,
    GRU_CELL,
    *PADS,
    *RESHAPES,
)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    for spec in SPECS:
        register(spec)
