"""What an export produces: the model's bytes, its record and its verification.

Its own module, torch-free, so that export targets, the CLI's output and the
conformance kit can name the result without importing the pipeline that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layerport.config import LayerConfig
from layerport.runtime.files import atomic_write_bytes
from layerport.runtime.metadata import ExportRecord
from layerport.verify.report import VerificationReport


@dataclass(frozen=True)
class ExportResult:
    """An exported model with its record, in memory until a target writes it.

    ``report`` is ``None`` when the export was not verified.
    """

    config: LayerConfig
    model_bytes: bytes
    record: ExportRecord
    node_count: int
    weight_bytes: int  # the initializers' data, as ``inspect`` counts it
    report: VerificationReport | None
    export_seconds: float
    verify_seconds: float

    @property
    def size(self) -> int:
        return len(self.model_bytes)

    def write(self, path: Path) -> None:
        """Write the model to ``path`` atomically: a failure keeps any existing file."""
        atomic_write_bytes(path, self.model_bytes)
