"""Benchmarking a layer: the engines verification uses, timed on the same inputs.

``bench_layer`` exports the layer, then times its engines on the same inputs
and the same thread count: ``eager`` (the layer's module), ``torch-reference``
(the spec's ``reference``, if it declares one: the fastest known eager way to
compute the same function with the same weights) and ``onnxruntime`` (a CPU
session on the exported model). Inputs are prepared once, outside the timing
loop, by each engine's ``bind``.

``BenchResult.to_dict()`` is the stable JSON schema::

    layer            qualified layer name
    params, dims     the configuration benchmarked; dtype, seed
    threads          {"torch": N, "onnxruntime": N}: intra-op threads of each
    export_seconds   torch.onnx export time (without verification)
    file_bytes       size of the exported model; nodes: ONNX nodes, subgraphs included
    flops            floating-point operations per call, or null
    samples_per_call the size of the spec's batch dim, or null when it declares none
    timing           the timing settings used
    engines          {name: {median_ms, p10_ms, p90_ms, calls, seconds,
                             calls_per_s, samples_per_s, gflops, max_abs_error}}
    ratios           {"onnxruntime_over_eager": r, "onnxruntime_over_torch-reference": r}:
                     median-latency ratios, below 1 when onnxruntime is faster
    machine          cpu, cores, load_average, python/torch/onnxruntime/numpy versions
    notes            what may make these figures less trustworthy
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from layerport.bench import DEFAULT_BENCH_THREADS
from layerport.bench.machine import machine_info, reliability_notes
from layerport.bench.timing import EngineTiming, TimingSettings, significant, time_engines
from layerport.config import LayerConfig
from layerport.dtypes import INT8_AGAINST_FLOAT, Tolerance, precision
from layerport.errors import UserInputError, VerificationFailed
from layerport.runtime.runtimes import NamedRuntime
from layerport.verify.compare import is_float
from layerport.verify.verification import compare_outputs

if TYPE_CHECKING:
    from layerport.runtime.session import SessionSettings
    from layerport.verify.engines import Engine


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
    # What ran the file: onnxruntime, or onnx-reference for a precision it cannot run.
    file_engine: str = "onnxruntime"

    def ratios(self) -> dict[str, float]:
        """The file's median latency over each eager engine's, as ``onnxruntime_over_eager``."""
        file_ms = self.engines[self.file_engine].median_ms
        return {
            f"{self.file_engine}_over_{name}": significant(file_ms / engine.median_ms)
            for name, engine in self.engines.items()
            if name != self.file_engine and engine.median_ms > 0
        }

    def to_dict(self) -> dict[str, Any]:
        onnxruntime = self.engines[self.file_engine]
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
    quantize: str | None = None,
    precisions: Sequence[str] = (),
    runtimes: Sequence[NamedRuntime] = (),
    forms: Sequence[str] = (),
) -> BenchResult:
    """Export ``config``'s layer and time its engines on the same inputs.

    With ``quantize="int8"``, the quantized file is timed too, as the engine
    ``onnxruntime-int8``; each of ``precisions`` adds the layer's file in that
    precision (``onnxruntime-float16``, ``onnx-reference-bfloat16``), fed the
    same inputs converted. Each of ``runtimes`` (``runtime.runtimes``) adds the
    same file in that runtime, as an engine of its name (``ort-noopt``,
    ``openvino``); ``ort`` is the ``onnxruntime`` engine already there. Each
    of ``forms`` (``LayerSpec.forms``) adds the layer's file in that form
    (``onnxruntime-fused``), and where its KV cache can be bound buffers
    (``runtime.bound``), that file as ``generate`` runs it too
    (``onnxruntime-fused-bound``). Every engine takes turns with the others,
    and each ratio is the file's time in ``config.dtype`` over that engine's.

    Raises ``VerificationFailed`` if an engine's outputs differ from eager's beyond
    the layer's tolerance: timing engines that compute different things is pointless.
    """
    import torch

    from layerport.eager.build import build_module
    from layerport.export import DEFAULT_OPSET
    from layerport.export.quantize import check_quantizable
    from layerport.export.torch_onnx import count_nodes, export_onnx
    from layerport.runtime.session import Session, SessionSettings
    from layerport.verify.engines import (
        EagerEngine,
        FileEngine,
        TorchReferenceEngine,
    )

    timing = timing or TimingSettings()
    timing.check()
    check_threads(threads)
    # The file is not verified here: for the rnn, verification's grid of sizes
    # takes 5-8x as long as the export itself, and bench would mostly wait for it.
    # Instead every engine's outputs on the benchmark's own inputs are checked
    # against eager's below, which is what keeps the timings honest.
    export_config = _export_config(config)
    started = time.perf_counter()
    model = export_onnx(build_module(export_config), export_config, DEFAULT_OPSET)
    export_seconds = time.perf_counter() - started
    check_quantizable(config, quantize)
    optional = [tensor.name for tensor in config.spec.inputs if tensor.optional]
    # Several files take turns: none may keep the CPU spinning between its calls.
    runtimes = [runtime for runtime in runtimes if runtime.name != "ort"]
    several = (
        quantize is not None or bool(runtimes) or any(dtype != config.dtype for dtype in precisions)
    )
    settings = SessionSettings(
        threads=threads, runtime=config.spec.precisions[config.dtype], spinning=not several
    )
    # A KV cache's past may be empty (a prefill): the sizes a file of it records.
    smallest = config.min_dims()
    session = Session(
        model,
        f"the export of {config.spec.name}",
        settings,
        optional_inputs=optional,
        smallest=smallest,
    )
    others: list[tuple[Engine, Tolerance]] = []
    if quantize is not None:
        from layerport.export.quantize import quantize_int8

        quantized_model, _ = quantize_int8(model, config.spec.name)
        quantized = Session(
            quantized_model,
            f"the {quantize} export of {config.spec.name}",
            settings,
            optional_inputs=optional,
            smallest=smallest,
        )
        others.append(
            # Against float32 eager: what int8 costs (verification holds the file to
            # the same quantization instead).
            (FileEngine(quantized, f"onnxruntime-{quantize}"), INT8_AGAINST_FLOAT)
        )
    for named in runtimes:
        in_runtime = named.open(
            model,
            session.name,
            optional_inputs=optional,
            smallest=smallest,
            threads=threads,
            spinning=False,
        )
        others.append((FileEngine(in_runtime, named.name), config.tolerance()))
    others += _form_engines(config, export_config, forms, settings, optional, smallest)
    for dtype in dict.fromkeys(precisions):
        if dtype == config.dtype:
            continue
        config.spec.check_precision(dtype)
        in_dtype = dataclasses.replace(export_config, dtype=dtype)
        runtime = config.spec.precisions[dtype]
        file = Session(
            export_onnx(build_module(in_dtype), in_dtype, DEFAULT_OPSET),
            f"the {dtype} export of {config.spec.name}",
            SessionSettings(threads=threads, runtime=runtime, spinning=False),
            optional_inputs=optional,
            smallest=smallest,
        )
        in_precision = _InPrecision(FileEngine(file, f"{runtime}-{dtype}"), dtype, config.dtype)
        # Held to eager in the benchmark's precision: the looser precision's tolerance.
        own, theirs = config.tolerance(), config.spec.tolerance(dtype)
        looser = Tolerance(max(own.atol, theirs.atol), max(own.rtol, theirs.rtol))
        others.append((in_precision, looser))

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = build_module(config)
        engines: list[Engine] = [EagerEngine(module, config)]
        if config.spec.reference is not None:
            engines.append(TorchReferenceEngine(module, config))
        engines.append(FileEngine(session))
        tolerances = {engine.name: config.tolerance() for engine in engines}
        for engine, tolerance in others:
            engines.append(engine)
            tolerances[engine.name] = tolerance
        arrays = config.random_inputs()
        # no_grad, not inference_mode, as in run_module; entered once, so its own
        # cost is not timed.
        with torch.no_grad():
            errors = _check_agreement(engines, arrays, tolerances)
            samples = time_engines({engine.name: engine.bind(arrays) for engine in engines}, timing)
        torch_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous_threads)

    flops = None
    if config.spec.flops is not None:
        with config.layer.plugin_code("flops()"):
            flops = config.spec.flops(config.params, config.dims)
    batch = config.dims.get(config.spec.batch_dim) if config.spec.batch_dim else None
    timings = {
        name: EngineTiming(name, tuple(durations), batch, flops, errors[name])
        for name, durations in samples.items()
    }
    machine = machine_info()
    return BenchResult(
        config=config,
        threads={"torch": torch_threads, "onnxruntime": threads},
        export_seconds=export_seconds,
        file_bytes=model.ByteSize(),
        nodes=count_nodes(model.graph),
        timing=timing,
        engines=timings,
        machine=machine,
        notes=reliability_notes(threads, machine, timings),
        file_engine=session.runtime,
    )


def _form_engines(
    config: LayerConfig,
    export_config: LayerConfig,
    forms: Sequence[str],
    settings: SessionSettings,
    optional: list[str],
    smallest: Mapping[str, int],
) -> list[tuple[Engine, Tolerance]]:
    """The layer's file in each of ``forms``, and its bound-cache run where it has one.

    They share the standard file's session settings, threads spinning as in
    ``generate``: ``time_engines`` pauses between turns, so no engine's threads
    still spin when the next one's turn starts.
    """
    from layerport.eager.build import build_module
    from layerport.export import DEFAULT_OPSET
    from layerport.export.torch_onnx import export_onnx
    from layerport.pipeline import chosen_form
    from layerport.runtime.bound import bound_session
    from layerport.runtime.session import Session
    from layerport.verify.engines import BoundCacheEngine, FileEngine

    streaming = config.spec.streaming
    engines: list[tuple[Engine, Tolerance]] = []
    for name in dict.fromkeys(forms):
        form = chosen_form(config, name)
        if form is None:
            continue
        model = export_onnx(build_module(export_config), export_config, DEFAULT_OPSET, form=form)
        label = f"the {name} export of {config.spec.name}"
        session = Session(model, label, settings, optional_inputs=optional, smallest=smallest)
        engines.append((FileEngine(session, f"onnxruntime-{name}"), config.tolerance()))
        if streaming is None or streaming.grows is None:
            continue
        variant = bound_session(session, streaming.carry)
        if variant is None:
            continue
        engine = BoundCacheEngine(variant, streaming.carry, f"onnxruntime-{name}-bound")
        engines.append((engine, config.tolerance()))
    return engines


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


class _InPrecision:
    """A file in another precision, fed inputs converted to it; its outputs come back
    in the benchmark's own precision, to compare with eager's."""

    def __init__(self, engine: Any, dtype: str, back: str) -> None:
        self.engine = engine
        self.name = engine.name
        self._dtype = precision(dtype).numpy_dtype
        self._back = precision(back).numpy_dtype

    def _converted(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: _cast(array, self._dtype) for name, array in inputs.items()}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.engine.run(self._converted(inputs))
        return {name: _cast(array, self._back) for name, array in outputs.items()}

    def bind(self, inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        bound: Callable[[], Any] = self.engine.bind(self._converted(inputs))
        return bound


def _check_agreement(
    engines: list[Any], arrays: Any, tolerances: Mapping[str, Tolerance]
) -> dict[str, float]:
    """Each engine's largest absolute difference from the first (eager), refusing any
    beyond its tolerance (the layer's, by dtype or quantization)."""
    eager, *others = engines
    expected = eager.run(arrays)
    errors = {eager.name: 0.0}
    for engine in others:
        comparisons = compare_outputs(
            f"bench inputs, {engine.name}",
            expected,
            engine.run(arrays),
            tolerances[engine.name],
            (engine.name, eager.name),
        )
        failed = [comparison for comparison in comparisons if not comparison.passed]
        if failed:
            raise VerificationFailed(
                f"{engine.name} does not compute what the eager layer computes, so timing it "
                f"means nothing: {failed[0].describe()}"
            )
        errors[engine.name] = max(comparison.max_abs_error for comparison in comparisons)
    return errors


def _cast(array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """A float array in ``dtype``; ids and masks keep their own type."""
    return array.astype(dtype) if is_float(array) else array
