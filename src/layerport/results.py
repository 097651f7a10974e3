"""What an export produces: the model's bytes, its record and its verification.

Its own module, torch-free, so that export targets, the CLI's output and the
conformance kit can name the result without importing the pipeline that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layerport.config import LayerConfig
from layerport.runtime.external import external_layout
from layerport.runtime.files import atomic_write_files
from layerport.runtime.metadata import ExportRecord
from layerport.verify.report import VerificationReport


@dataclass(frozen=True)
class ExportResult:
    """An exported model with its record, in memory until a target writes it.

    ``report`` is ``None`` when the export was not verified. With
    ``external_data``, the model is written with its initializers in a data
    file beside it (``runtime.external``).
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

    @property
    def size(self) -> int:
        return len(self.model_bytes)

    def files(self, name: str) -> dict[str, bytes]:
        """The files that hold the model written as ``name``, by name: it, and its data file."""
        if not self.external_data:
            return {name: self.model_bytes}
        return external_layout(self.model_bytes, name)

    def write(self, path: Path) -> None:
        """Write the model to ``path`` atomically: a failure keeps any existing file or pair."""
        atomic_write_files(path, self.files(path.name))
