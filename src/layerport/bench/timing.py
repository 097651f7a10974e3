"""Timing engines side by side: warm-up, then turns in short blocks, then medians.

Interleaving spreads a shared machine's background noise over every engine
alike, so the ratios stay meaningful even when the absolute times wobble. The
garbage collector is off while timing, as ``timeit`` does.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from layerport.errors import UserInputError


@dataclass(frozen=True)
class TimingSettings:
    """How long to warm up and how long to measure each engine.

    An engine is done when it has run ``min_calls`` and ``min_seconds``, or
    ``max_calls``. Blocks of calls last about ``block_seconds`` (at least one call),
    short enough that every engine sees the same background load. Before each
    block the machine idles ``settle_seconds`` and one untimed call wakes the
    engine's threads: onnxruntime's intra-op threads keep spinning after a run,
    and on a 2-core VM an ``nn.LSTM`` call (batch 64, seq 256) right after an
    onnxruntime block took 36-44 ms against 17-21 ms alone, for 20-50 ms after
    it. Without the pause the engine after onnxruntime measured up to 2x slow.
    """

    warmup_calls: int = 5
    warmup_seconds: float = 0.2
    min_calls: int = 30
    min_seconds: float = 1.0
    max_calls: int = 10_000
    block_seconds: float = 0.1
    settle_seconds: float = 0.05

    def check(self) -> None:
        if not (math.isfinite(self.min_seconds) and self.min_seconds > 0):
            raise UserInputError(f"min time must be above 0 seconds, got {self.min_seconds}")
        if self.min_calls < 1 or self.max_calls < self.min_calls:
            raise UserInputError(
                f"calls must satisfy 1 <= min ({self.min_calls}) <= max ({self.max_calls})"
            )
        if self.warmup_calls < 1 or self.warmup_seconds < 0 or self.block_seconds <= 0:
            raise UserInputError("warm-up needs at least one call and a non-negative time")
        if not (math.isfinite(self.settle_seconds) and self.settle_seconds >= 0):
            raise UserInputError(
                f"settle time must be 0 seconds or more, got {self.settle_seconds}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "warmup_calls": self.warmup_calls,
            "warmup_seconds": self.warmup_seconds,
            "min_calls": self.min_calls,
            "min_seconds": self.min_seconds,
            "max_calls": self.max_calls,
            "block_seconds": self.block_seconds,
            "settle_seconds": self.settle_seconds,
        }


@dataclass(frozen=True)
class EngineTiming:
    """Every timed call of one engine, in nanoseconds, and what one call computes."""

    name: str
    samples_ns: tuple[int, ...]
    samples_per_call: int | None
    flops: int | None
    max_abs_error: float = 0.0

    def percentile_ms(self, percent: float) -> float:
        return float(np.percentile(self.samples_ns, percent)) / 1e6

    @property
    def median_ms(self) -> float:
        return self.percentile_ms(50)

    def to_dict(self) -> dict[str, Any]:
        median_s = self.median_ms / 1e3
        calls_per_s = 1 / median_s if median_s > 0 else math.inf
        return {
            "median_ms": significant(self.median_ms),
            "p10_ms": significant(self.percentile_ms(10)),
            "p90_ms": significant(self.percentile_ms(90)),
            "calls": len(self.samples_ns),
            "seconds": significant(sum(self.samples_ns) / 1e9),
            "calls_per_s": significant(calls_per_s),
            "samples_per_s": None
            if self.samples_per_call is None
            else significant(self.samples_per_call * calls_per_s),
            "gflops": None if self.flops is None else significant(self.flops * calls_per_s / 1e9),
            "max_abs_error": significant(self.max_abs_error),
        }


def significant(value: float, digits: int = 4) -> float:
    # Four significant digits: more than the noise of any timing here justifies.
    return float(f"{value:.{digits}g}")


def time_engines(
    calls: Mapping[str, Callable[[], Any]], timing: TimingSettings
) -> dict[str, list[int]]:
    """Each call's duration in nanoseconds, per engine, engines taking turns in blocks.

    The garbage collector is off while timing, as ``timeit`` does, so one engine's
    garbage is not collected during another's call. Each block starts after a
    pause and one untimed call (see ``TimingSettings``), so that no engine is
    timed while the previous one's threads still spin.
    """
    clock = time.perf_counter_ns
    collecting = gc.isenabled()
    gc.disable()
    # Scaled down with the blocks, so that a short test bench stays short.
    settle = min(timing.settle_seconds, timing.min_seconds / 10)
    try:
        block_calls = {
            name: _block_size(_warm_up(call, timing), timing) for name, call in calls.items()
        }
        samples: dict[str, list[int]] = {name: [] for name in calls}
        spent = dict.fromkeys(calls, 0)
        min_ns, pending = int(timing.min_seconds * 1e9), list(calls)
        while pending:
            for name in pending:
                call, durations = calls[name], samples[name]
                time.sleep(settle)
                call()
                for _ in range(min(block_calls[name], timing.max_calls - len(durations))):
                    started = clock()
                    call()
                    durations.append(clock() - started)
                    spent[name] += durations[-1]
            pending = [
                name
                for name in pending
                if len(samples[name]) < timing.max_calls
                and (len(samples[name]) < timing.min_calls or spent[name] < min_ns)
            ]
    finally:
        if collecting:
            gc.enable()
    return samples


def _warm_up(call: Callable[[], Any], timing: TimingSettings) -> float:
    """Run ``call`` until warm; returns the median seconds of the warm-up calls."""
    durations: list[float] = []
    deadline = time.perf_counter() + min(timing.warmup_seconds, timing.min_seconds)
    while len(durations) < timing.warmup_calls or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    # The last calls are the warm ones; the first include allocation and compilation.
    return float(np.median(durations[len(durations) // 2 :]))


def _block_size(seconds_per_call: float, timing: TimingSettings) -> int:
    block_seconds = min(timing.block_seconds, timing.min_seconds / 10)
    # At most a twentieth of the cap, so a fast engine still takes many turns.
    most = max(1, timing.max_calls // 20)
    if seconds_per_call <= 0:
        return most
    return max(1, min(most, round(block_seconds / seconds_per_call)))
