"""Benchmarking a layer: eager PyTorch against its export in onnxruntime.

``bench_layer`` exports the layer, then times up to three engines on the same
inputs and the same thread count:

- ``eager``: the layer's own module, called as ``build.run_module`` calls it;
- ``reference``: the spec's ``reference(module)``, if it declares one: the
  fastest known eager way to compute the same function with the same weights
  (for the rnn, ``nn.RNN`` + ``nn.Linear``);
- ``onnxruntime``: a CPU session on the exported bytes.

Inputs are prepared once, outside the timing loop, as torch tensors for the
eager engines and numpy arrays for onnxruntime. Each engine is warmed up, then
the engines take turns in short blocks of calls until each has run both a
minimum number of calls and a minimum time (or a cap on calls): interleaving
spreads a shared machine's background noise over every engine alike, so the
ratios stay meaningful even when the absolute times wobble.

``BenchResult.to_dict()`` is the stable ``bench --json`` schema::

    layer            qualified layer name
    params, dims     the configuration benchmarked; dtype, seed
    threads          {"torch": N, "onnxruntime": N}: intra-op threads of each
    export_seconds   torch.onnx export time (without verification)
    file_bytes       size of the exported file; nodes: ONNX nodes, subgraphs included
    flops            floating-point operations per call, or null
    samples_per_call the batch dim's size, or null when the layer has none
    timing           the timing settings used
    engines          {name: {median_ms, p10_ms, p90_ms, calls, seconds,
                             calls_per_s, samples_per_s, gflops, max_abs_error}}
    ratios           {"onnxruntime_over_eager": r, "onnxruntime_over_reference": r}:
                     median-latency ratios, below 1 when onnxruntime is faster
    machine          cpu, cores, load_average, python/torch/onnxruntime/numpy versions
    notes            what may make these figures less trustworthy

``measure_startup`` times ``layerport --help`` against ``python -c "import
torch"`` in fresh processes: the CLI must start without paying for torch.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from layerport.config import LayerConfig
from layerport.defaults import DEFAULT_BENCH_THREADS
from layerport.errors import UserInputError, VerificationFailed, WorkFailed, one_line

ENGINES = ("eager", "reference", "onnxruntime")
BATCH_DIM = "batch"


@dataclass(frozen=True)
class TimingSettings:
    """How long to warm up and how long to measure each engine.

    An engine is done when it has run ``min_calls`` and ``min_seconds``, or
    ``max_calls``. Blocks of calls last about ``block_seconds`` (at least one call),
    short enough that every engine sees the same background load.
    """

    warmup_calls: int = 5
    warmup_seconds: float = 0.2
    min_calls: int = 30
    min_seconds: float = 1.0
    max_calls: int = 10_000
    block_seconds: float = 0.05

    def check(self) -> None:
        if not (math.isfinite(self.min_seconds) and self.min_seconds > 0):
            raise UserInputError(f"min time must be above 0 seconds, got {self.min_seconds}")
        if self.min_calls < 1 or self.max_calls < self.min_calls:
            raise UserInputError(
                f"calls must satisfy 1 <= min ({self.min_calls}) <= max ({self.max_calls})"
            )
        if self.warmup_calls < 1 or self.warmup_seconds < 0 or self.block_seconds <= 0:
            raise UserInputError("warm-up needs at least one call and a non-negative time")

    def to_dict(self) -> dict[str, Any]:
        return {
            "warmup_calls": self.warmup_calls,
            "warmup_seconds": self.warmup_seconds,
            "min_calls": self.min_calls,
            "min_seconds": self.min_seconds,
            "max_calls": self.max_calls,
            "block_seconds": self.block_seconds,
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
            "median_ms": _significant(self.median_ms),
            "p10_ms": _significant(self.percentile_ms(10)),
            "p90_ms": _significant(self.percentile_ms(90)),
            "calls": len(self.samples_ns),
            "seconds": _significant(sum(self.samples_ns) / 1e9),
            "calls_per_s": _significant(calls_per_s),
            "samples_per_s": None
            if self.samples_per_call is None
            else _significant(self.samples_per_call * calls_per_s),
            "gflops": None if self.flops is None else _significant(self.flops * calls_per_s / 1e9),
            "max_abs_error": _significant(self.max_abs_error),
        }


def _significant(value: float, digits: int = 4) -> float:
    # Four significant digits: more than the noise of any timing here justifies.
    return float(f"{value:.{digits}g}")


@dataclass(frozen=True)
class BenchResult:
    """One layer's benchmark: the export, each engine's timing, and their ratios."""

    config: LayerConfig
    threads: dict[str, int]
    export_seconds: float
    file_bytes: int
    nodes: int
    timing: TimingSettings
    engines: dict[str, EngineTiming]
    machine: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def ratios(self) -> dict[str, float]:
        """onnxruntime's median latency over each eager engine's."""
        onnxruntime = self.engines["onnxruntime"].median_ms
        return {
            f"onnxruntime_over_{name}": _significant(onnxruntime / engine.median_ms)
            for name, engine in self.engines.items()
            if name != "onnxruntime" and engine.median_ms > 0
        }

    def to_dict(self) -> dict[str, Any]:
        onnxruntime = self.engines["onnxruntime"]
        return {
            "layer": self.config.layer.qualified_name,
            "name": self.config.spec.name,
            "params": dict(self.config.params),
            "dims": dict(self.config.dims),
            "dtype": self.config.dtype,
            "seed": self.config.seed,
            "threads": dict(self.threads),
            "export_seconds": round(self.export_seconds, 3),
            "file_bytes": self.file_bytes,
            "nodes": self.nodes,
            "flops": onnxruntime.flops,
            "samples_per_call": onnxruntime.samples_per_call,
            "timing": self.timing.to_dict(),
            "engines": {name: engine.to_dict() for name, engine in self.engines.items()},
            "ratios": self.ratios(),
            "machine": dict(self.machine),
            "notes": list(self.notes),
        }


def bench_layer(
    config: LayerConfig,
    *,
    threads: int = DEFAULT_BENCH_THREADS,
    timing: TimingSettings | None = None,
) -> BenchResult:
    """Export ``config``'s layer and time eager, reference and onnxruntime on the same inputs.

    Raises ``VerificationFailed`` if an engine's outputs differ from eager's beyond
    the layer's tolerance: timing engines that compute different things is pointless.
    """
    import torch

    from layerport.build import build_module
    from layerport.eager import random_inputs
    from layerport.export import export_layer

    timing = timing or TimingSettings()
    timing.check()
    check_threads(threads)
    # The file is not verified here: for the rnn, verification's grid of sizes
    # takes 5-8x as long as the export itself, and bench would mostly wait for it.
    # Instead every engine's outputs on the benchmark's own inputs are checked
    # against eager's below, which is what keeps the timings honest.
    export = export_layer(_export_config(config), verify=False)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = build_module(config)
        arrays = random_inputs(config)
        arguments = [
            torch.from_numpy(arrays[tensor.name]) if tensor.name in arrays else None
            for tensor in config.spec.inputs
        ]
        calls: dict[str, Callable[[], Any]] = {"eager": lambda: module(*arguments)}
        if config.spec.reference is not None:
            reference = config.spec.reference(module)
            calls["reference"] = lambda: reference(*arguments)
        calls["onnxruntime"] = _onnxruntime_call(export.model_bytes, config, arrays, threads)
        # no_grad, not inference_mode, as in build.run_module; entered once, so its
        # own cost is not timed.
        with torch.no_grad():
            errors = _check_agreement(config, calls)
            samples = time_engines(calls, timing)
        torch_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)

    flops = config.spec.flops(config.params, config.dims) if config.spec.flops else None
    batch = config.dims.get(BATCH_DIM)
    engines = {
        name: EngineTiming(name, tuple(samples[name]), batch, flops, errors[name]) for name in calls
    }
    machine = machine_info()
    return BenchResult(
        config=config,
        threads={"torch": torch_threads, "onnxruntime": threads},
        export_seconds=export.export_seconds,
        file_bytes=export.size,
        nodes=export.node_count,
        timing=timing,
        engines=engines,
        machine=machine,
        notes=_notes(threads, machine, engines),
    )


def check_threads(threads: int) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserInputError(f"threads must be an integer >= 1, got {threads!r}")


def _export_config(config: LayerConfig) -> LayerConfig:
    """The configuration to export at: the file's dims stay symbolic, so any size is
    benchmarked on the same file; only sizes below 2 (which the exporter would pin)
    are traced at the layer's default instead."""
    dims = {
        name: size if size >= 2 else config.spec.dim(name).default
        for name, size in config.dims.items()
    }
    return config.with_dims(dims)


def _onnxruntime_call(
    model_bytes: bytes, config: LayerConfig, arrays: Mapping[str, np.ndarray], threads: int
) -> Callable[[], Any]:
    """A session on the exported bytes, with its feed and run options prepared once.

    Optional inputs left out of ``arrays`` are fed as zeros, as ``runtime.Model``
    does; the eager engines get ``None`` for them and make their own zeros.
    """
    import onnxruntime

    from layerport.arrays import NUMPY_DTYPES
    from layerport.runtime import SessionSettings, open_session

    session = open_session(
        model_bytes, f"the export of {config.spec.name}", SessionSettings(threads=threads)
    )
    feed = {
        tensor.name: arrays[tensor.name]
        if tensor.name in arrays
        else np.zeros(config.shape(tensor), NUMPY_DTYPES[config.dtype])
        for tensor in config.spec.inputs
    }
    output_names = [tensor.name for tensor in config.spec.outputs]
    run_options = onnxruntime.RunOptions()
    return lambda: session.run(output_names, feed, run_options)


def _check_agreement(
    config: LayerConfig, calls: Mapping[str, Callable[[], Any]]
) -> dict[str, float]:
    """Each engine's largest absolute difference from eager, refusing any beyond tolerance."""
    from layerport.compare import compare_arrays

    names = [tensor.name for tensor in config.spec.outputs]
    outputs = {engine: _as_arrays(call(), names, engine) for engine, call in calls.items()}
    tolerance = config.spec.tolerance(config.dtype)
    errors = {"eager": 0.0}
    for engine, actual in outputs.items():
        if engine == "eager":
            continue
        comparisons = [
            compare_arrays(
                name, f"bench inputs, {engine}", actual[name], outputs["eager"][name], tolerance
            )
            for name in names
        ]
        failed = [comparison for comparison in comparisons if not comparison.passed]
        if failed:
            raise VerificationFailed(
                f"{engine} does not compute what the eager layer computes, so timing it "
                f"means nothing: {failed[0].describe()}"
            )
        errors[engine] = max(comparison.max_abs_error for comparison in comparisons)
    return errors


def _as_arrays(result: Any, names: Sequence[str], engine: str) -> dict[str, np.ndarray]:
    outputs = result if isinstance(result, (tuple, list)) else (result,)
    if len(outputs) != len(names):
        raise VerificationFailed(
            f"{engine} returned {len(outputs)} outputs, the spec declares {len(names)} "
            f"({', '.join(names)})"
        )
    return {
        name: np.asarray(output.detach().numpy() if hasattr(output, "detach") else output)
        for name, output in zip(names, outputs, strict=True)
    }


def time_engines(
    calls: Mapping[str, Callable[[], Any]], timing: TimingSettings
) -> dict[str, list[int]]:
    """Each call's duration in nanoseconds, per engine, engines taking turns in blocks.

    The garbage collector is off while timing, as ``timeit`` does, so one engine's
    garbage is not collected during another's call.
    """
    clock = time.perf_counter_ns
    collecting = gc.isenabled()
    gc.disable()
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


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, so they can be compared across runs."""
    import onnxruntime
    import torch

    from layerport import __version__

    cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    return {
        "cpu": _cpu_model(),
        "cores": cores,
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


def _notes(
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
                "the medians resist such stalls, but compare with --threads 1 before quoting them"
            )
    return notes


# ---------------------------------------------------------------------------
# Startup time


@dataclass(frozen=True)
class StartupResult:
    """Median process wall times of ``layerport --help`` and of ``import torch``."""

    layerport_help_seconds: float
    import_torch_seconds: float
    runs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "layerport_help_seconds": _significant(self.layerport_help_seconds),
            "import_torch_seconds": _significant(self.import_torch_seconds),
            "ratio": _significant(self.layerport_help_seconds / self.import_torch_seconds),
            "runs": self.runs,
        }


def measure_startup(runs: int = 5) -> StartupResult:
    """Time fresh processes, alternating the two commands; the medians resist outliers."""
    if runs < 1:
        raise UserInputError(f"runs must be at least 1, got {runs}")
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
                said = completed.stderr.strip().splitlines()
                raise WorkFailed(
                    f"{' '.join(command)} exited {completed.returncode}"
                    + (f": {one_line(said[-1])}" if said else "")
                )
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
