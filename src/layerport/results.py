"""What an export produces: the model's bytes, its record and its verification.

Its own module, torch-free, so that export targets, the CLI's output and the
conformance kit can name the result without importing the pipeline that makes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from layerport.config import LayerConfig
from layerport.runtime.external import (
    ExternalModel,
    data_file_name,
    detach_tensors,
    external_layout,
)
from layerport.runtime.files import FileContent, atomic_write_files
from layerport.runtime.metadata import ExportRecord
from layerport.verify.report import VerificationReport


@dataclass(frozen=True)
class ExportResult:
    """An exported model with its record, in memory until a target writes it.

    ``report`` is ``None`` when the export was not verified. With
    ``external_data``, the model is written with its initializers in a data
    file beside it (``runtime.external``). Weights past protobuf's 2 GiB are
    never in ``model_bytes``: they are ``external_tensors``, by name, and
    ``model_bytes`` is the rest of the model, which is never written alone.
    """

    config: LayerConfig
    model_bytes: bytes
    record: ExportRecord
    node_count: int
    weight_bytes: int  # the initializers' data, as ``inspect`` counts it
    report: VerificationReport | None
    export_seconds: float
    verify_seconds: float
    external_data: bool = False
    external_tensors: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Bytes of the model and its weights (the data file's alignment padding aside)."""
        return len(self.model_bytes) + sum(array.nbytes for array in self.external_tensors.values())

    def files(self, name: str) -> dict[str, FileContent]:
        """The files that hold the model written as ``name``, by name: it, and its data file."""
        if not self.external_data:
            return {name: self.model_bytes}
        proto = onnx.load_from_string(self.model_bytes)
        if self.external_tensors:
            return external_layout(ExternalModel(proto, self.external_tensors), name)
        return external_layout(detach_tensors(proto), name)

    def write(self, path: Path) -> None:
        """Write the model to ``path`` atomically: a failure keeps any existing file or pair.

        A data file left beside ``path`` by an earlier export with external data
        goes when a self-contained model replaces it.
        """
        atomic_write_files(path, self.files(path.name), stale=[data_file_name(path.name)])
