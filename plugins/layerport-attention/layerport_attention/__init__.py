"""layerport-attention: attention and a decoder block whose KV cache is streamed state.

The exported file takes the cache in (``past_key``, ``past_value``) and gives
it back grown by the call (``present_key``, ``present_value``), so one file
serves the prefill and every decode step, and verification proves a prefill
followed by single-token steps equals the whole pass. This package only
declares specs and must stay torch-free: ``layerport list`` imports it.
"""

from __future__ import annotations

from collections.abc import Callable

from layerport.plugin import LayerSpec, hookimpl
from layerport_attention.attention import ATTENTION
from layerport_attention.block import DECODER_BLOCK

SPECS = (ATTENTION, DECODER_BLOCK)


@hookimpl
def register_layers(register: Callable[[LayerSpec], None]) -> None:
    for spec in SPECS:
        register(spec)
