"""The built-in ``onnx`` export target: one self-contained ``.onnx`` file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from layerport import hookimpl
from layerport.runtime.external import data_file_name
from layerport.runtime.files import check_writable_target
from layerport.targets import ExportTarget, TargetOptions

if TYPE_CHECKING:
    from layerport.results import ExportResult


def write_onnx_file(result: ExportResult, output: Path, options: TargetOptions) -> Path:
    result.write(output)
    return output


def _notes(result: ExportResult, options: TargetOptions) -> list[str]:
    if not result.external_data:
        return []
    return [
        f"the initializers are in {data_file_name('MODEL.onnx')} beside the model, named "
        "after it: keep the two files together"
    ]


ONNX_FILE = ExportTarget(
    name="onnx",
    description="One .onnx file, every initializer inside it (or, with external data, in "
    "MODEL.onnx.data beside it).",
    output_in=lambda folder, stem: folder / f"{stem}.onnx",
    check=lambda output, options: check_writable_target(output),
    write=write_onnx_file,
    notes=_notes,
)


@hookimpl
def register_export_targets(register: Callable[[ExportTarget], None]) -> None:
    register(ONNX_FILE)
