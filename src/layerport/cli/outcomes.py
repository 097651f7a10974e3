"""What happened to each layer of ``export --all`` or ``bench --all``: data for the output."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerport.cli.output import export_summary
from layerport.registry import RegisteredLayer

if TYPE_CHECKING:
    from layerport.bench.benchmark import BenchResult
    from layerport.results import ExportResult


@dataclass(frozen=True)
class LayerOutcome:
    """What happened to one layer of ``export --all`` or ``bench --all``."""

    layer: RegisteredLayer
    path: Path | None = None
    export: ExportResult | None = None
    bench: BenchResult | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {
                "layer": self.layer.qualified_name,
                "name": self.layer.name,
                "status": "failed",
                "error": self.error,
            }
        data = export_summary(self.export, self.path) if self.export else {}
        data |= self.bench.to_dict() if self.bench else {}
        return {**data, "status": "ok"}
