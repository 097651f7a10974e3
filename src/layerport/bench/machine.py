"""What bench figures were measured on, and what may make them less trustworthy."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from layerport.bench.timing import EngineTiming


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, so they can be compared across runs."""
    import onnxruntime
    import torch

    from layerport import __version__
    from layerport.runtime.session import usable_cores

    return {
        "cpu": _cpu_model(),
        "cores": usable_cores(),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "layerport": __version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def reliability_notes(
    threads: int, machine: Mapping[str, Any], engines: Mapping[str, EngineTiming]
) -> list[str]:
    """What may make these figures less trustworthy, for the user to read before quoting them."""
    notes = []
    cores, load = machine["cores"], machine["load_average"]
    if threads > cores:
        notes.append(
            f"{threads} threads on {cores} cores: the engines' threads contend, timings are pessimistic"
        )
    if load is not None and load > 0.75 * cores:
        notes.append(
            f"load average {load:.1f} on {cores} cores: other processes share the CPU, so absolute "
            "times are noisy; the ratios hold better, as the engines take turns"
        )
    for name, engine in engines.items():
        median, slow = engine.median_ms, engine.percentile_ms(90)
        if slow > 3 * median:
            # Seen on busy machines: torch's OpenMP threads wait at a barrier for a
            # descheduled peer, and single calls stall for up to hundreds of ms.
            notes.append(
                f"{name}: the slowest tenth of calls took over {slow / median:.0f}x the median; "
                "the medians resist such stalls, but compare with 1 thread before quoting them"
            )
    return notes
