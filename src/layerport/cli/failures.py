"""``verify --save-failures``: a failed verification's failing cases, and how to rerun them.

Whoever gets the folder needs neither layerport's grid nor torch to see the
failure again: ``reproduce.sh`` runs the file on the saved inputs with
``layerport infer``, whose outputs compare with the saved ones. It writes CLI
commands, so it lives with the CLI.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from layerport.runtime.arrays import savable
from layerport.runtime.files import atomic_save_npz, atomic_write_bytes
from layerport.verify.report import VerificationReport


def save_failures(report: VerificationReport, path: Path, directory: Path) -> None:
    """Write each kept failing case's arrays to ``directory``, and how to rerun it.

    ``reproduce.sh`` holds one ``layerport infer`` command a case; its output
    compares with the saved ``onnxruntime`` (or ``onnx-reference``) outputs.
    The report gets a note saying where they are.
    """
    directory.mkdir(parents=True, exist_ok=True)
    runtime = report.engines[0]
    lines = [f"# {len(report.failures)} failing comparisons of {path}; the first cases:"]
    for number, run in enumerate(report.failed_runs, start=1):
        stem = directory / f"failure-{number}"
        atomic_save_npz(stem.with_name(f"{stem.name}-inputs.npz"), savable(run.inputs)[0])
        for engine, outputs in run.outputs.items():
            name = engine.replace(" ", "-")
            atomic_save_npz(stem.with_name(f"{stem.name}-{name}.npz"), savable(outputs)[0])
        command = [
            "layerport", "infer", str(path),
            "--input", f"{stem}-inputs.npz",
            "--output", f"{stem}-rerun.npz",
            "--runtime", runtime,
        ]  # fmt: skip
        lines += [f"# {run.case}", shlex.join(command)]
    atomic_write_bytes(directory / "reproduce.sh", ("\n".join(lines) + "\n").encode())
    report.notes.append(f"the failing cases' inputs and outputs are in {directory}")
