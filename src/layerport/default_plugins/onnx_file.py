"""The built-in ``onnx`` export target: one self-contained ``.onnx`` file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from layerport import hookimpl
from layerport.runtime.files import atomic_write_bytes, check_writable_target
from layerport.targets import ExportTarget, TargetOptions

if TYPE_CHECKING:
    from layerport.results import ExportResult


def write_onnx_file(result: ExportResult, output: Path, options: TargetOptions) -> Path:
    atomic_write_bytes(output, result.model_bytes)
    return output


ONNX_FILE = ExportTarget(
    name="onnx",
    description="One .onnx file, every initializer inside it.",
    output_in=lambda folder, stem: folder / f"{stem}.onnx",
    check=lambda output, options: check_writable_target(output),
    write=write_onnx_file,
)


@hookimpl
def register_export_targets(register: Callable[[ExportTarget], None]) -> None:
    register(ONNX_FILE)
