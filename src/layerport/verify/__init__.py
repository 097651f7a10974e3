"""The verification stage: proving that an export computes what eager PyTorch computes.

- ``engines``: what runs a layer, a file or a served model on given inputs
  (eager PyTorch, the layer's torch reference, onnxruntime, a Triton server),
  so any two can be compared;
- ``structure``: the file's names, dtypes and dims against the spec;
- ``grid``: the sizes verification runs at, and the chunks of a streamed sequence;
- ``compare``: one output against another, element by element;
- ``report``: what a verification found, as data;
- ``verification``: ``verify_engines``, which runs the grid through two engines;
- ``rebuild``: the eager layer an export's record describes;
- ``server``: ``verify_server``, a served model against that layer.

Importing this package imports no torch; only the eager engines need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TRIALS = 3  # random input draws at each point of the verification grid


@dataclass(frozen=True)
class VerifyOptions:
    """How to verify an export against the layer its record describes.

    Shared by ``pipeline.verify_file`` and ``verify.server.verify_server``:

    - ``weights``: the weights file the export was made from, if any (its
      tensors' content hash must match the record's);
    - ``dims``: sizes to build the grid around, instead of the traced ones;
    - ``atol``, ``rtol``: a fixed tolerance instead of the layer's own for the
      file's dtype;
    - ``trials``: random input draws at each grid point.
    """

    weights: Path | None = None
    dims: Mapping[str, int] | None = None
    atol: float | None = None
    rtol: float | None = None
    trials: int = DEFAULT_TRIALS
