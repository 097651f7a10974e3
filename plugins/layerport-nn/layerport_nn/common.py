"""What the layer families share: the dynamic dims, and seeded weights that hide no mix-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerport.plugin import Dim, Streaming

if TYPE_CHECKING:
    import torch

BATCH = Dim("batch", 4, "samples", check_size=9)
SEQ = Dim("seq", 10, "positions per sequence", check_size=27)
# A token sequence's activations: the shape embeddings, norms and activations take.
TOKENS = ("batch", "seq", "features")
# A layer that maps each position on its own streams along seq with no state: a
# model of such layers around a KV-cache layer streams too (layerport.model.compose).
# Verification proves it, as it proves any stream: chunks against the whole pass.
POSITIONWISE = Streaming(dim="seq", carry=())


def scattered(tensor: torch.Tensor, center: float, spread: float) -> None:
    """Fill ``tensor`` (under the builder's seed) with values ``center`` +- ``spread``.

    torch initializes norms to ones and zeros and BatchNorm's statistics to 0
    and 1: with such weights a scale read as a shift, or a mean read as a
    variance, would verify. Seeded layers get scattered values instead; a
    checkpoint's replace them.
    """
    import torch

    with torch.no_grad():
        tensor.uniform_(center - spread, center + spread)
