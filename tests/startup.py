"""How fast ``layerport`` starts, against ``import torch``: a development check.

Commands that do not need torch must not import it. This times fresh
processes, alternating ``layerport --help`` with ``python -c "import torch"``,
and prints the medians and their ratio as JSON::

    .venv/bin/python tests/startup.py 5

``tests/test_bench.py`` runs it once per suite; the README's Speed section
quotes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StartupResult:
    """Median process wall times of ``layerport --help`` and of ``import torch``."""

    layerport_help_seconds: float
    import_torch_seconds: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "layerport_help_seconds": round(self.layerport_help_seconds, 4),
            "import_torch_seconds": round(self.import_torch_seconds, 4),
            "ratio": round(self.layerport_help_seconds / self.import_torch_seconds, 4),
            "runs": self.runs,
        }


def measure_startup(runs: int = 5) -> StartupResult:
    """Time fresh processes, alternating the two commands; the medians resist outliers."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    commands = {
        "help": [*layerport_command(), "--help"],
        "torch": [sys.executable, "-c", "import torch"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            started = time.perf_counter()
            completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
            times[name].append(time.perf_counter() - started)
            if completed.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} exited {completed.returncode}")
    return StartupResult(
        layerport_help_seconds=float(np.median(times["help"])),
        import_torch_seconds=float(np.median(times["torch"])),
        runs=runs,
    )


def layerport_command() -> list[str]:
    """The console script beside this interpreter, as a user runs it, else ``python -m``."""
    script = Path(sys.executable).with_name("layerport")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "layerport"]


if __name__ == "__main__":
    print(json.dumps(measure_startup(int(sys.argv[1]) if sys.argv[1:] else 5).to_dict(), indent=2))
