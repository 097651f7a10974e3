"""Running the grid through two engines and comparing every output.

``verify_engines`` runs the engine under test (onnxruntime on the export) and a
trusted engine (eager PyTorch) on the same inputs over the grid of sizes, with
several random draws per point: the first draw leaves optional inputs out, so
their zero default is checked too. For layers that declare streaming, it also
runs a long sequence through the engine under test in uneven chunks, carrying
state from chunk to chunk, against one pass of the trusted engine over the whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from layerport.config import LayerConfig, check_memory
from layerport.dtypes import Tolerance
from layerport.errors import LayerportError, WorkFailed
from layerport.verify import DEFAULT_TRIALS
from layerport.verify.compare import EXACT, Comparison, compare_arrays, is_float
from layerport.verify.decoding import decode_cases, describe_position, locate_in_stream
from layerport.verify.engines import Engine
from layerport.verify.grid import grid_points, size_grid, streaming_chunks
from layerport.verify.report import KEPT_FAILURES, FailedRun, VerificationReport, format_dims
from layerport.verify.verdict import FLOAT64, judge_outputs


def verify_engines(
    config: LayerConfig,
    actual: Engine,
    expected: Engine,
    export_dims: Mapping[str, int],
    *,
    tolerance: Tolerance | None = None,
    trials: int = DEFAULT_TRIALS,
    structure_problems: Sequence[str] = (),
    baseline: Engine | None = None,
    largest: Mapping[str, int] | None = None,
    leave_out_optional: bool = True,
    chunk_expected: bool = False,
    output_scales: Mapping[str, float] | None = None,
    bound: Engine | None = None,
) -> VerificationReport:
    """Compare ``actual`` with ``expected`` over the grid for a file traced at ``export_dims``.

    ``structure_problems``, found in the file before any run, fail the report
    without running anything. ``baseline`` is the layer in float64: with it and
    no ``tolerance``, ``actual`` is judged against it by the float64 verdict
    (``verify.verdict``), with ``expected`` (eager in the file's precision) as
    the measure of what the precision costs; with a ``tolerance``, ``actual`` is
    compared with ``expected`` element by element, and the cost is reported
    (``report.costs``) but never judged. ``largest`` caps
    dims that ``actual`` limits (see ``size_grid``). ``leave_out_optional``
    false sends every input in every draw, to an engine that requires them all
    (a served model whose backend cannot fill optional inputs in).
    ``chunk_expected`` streams ``expected`` in the same chunks as ``actual``, for
    a reference whose result depends on the call's inputs as a whole (int8's
    dynamic activation ranges), instead of one pass over the whole sequence.
    ``output_scales`` gives outputs a least scale for the verdict's floor
    (``verdict.bounded_output_scales``).
    """
    spec = config.spec
    grid = size_grid(spec, export_dims, config.params, largest)
    report = VerificationReport(
        layer=config.layer.qualified_name,
        dtype=config.dtype,
        tolerance=tolerance
        if tolerance is not None or baseline is not None
        else spec.tolerance(config.dtype),
        export_dims=dict(export_dims),
        grid=grid,
        trials=trials,
        engines=(actual.name, expected.name),
        structure_problems=list(structure_problems),
        left_out=[tensor.name for tensor in spec.inputs if tensor.optional]
        if leave_out_optional
        else [],
        output_scales=dict(output_scales or {}),
    )
    if report.structure_problems:
        return report
    points = grid_points(grid)
    for dims in points:
        check_memory(config, dims)
    draw = 0
    for dims in points:
        at_dims = config.with_dims(dims)
        for trial in range(trials):
            draw += 1
            inputs = at_dims.random_inputs(
                config.seed + 7919 * draw, include_optional=trial > 0 or not leave_out_optional
            )
            case = f"{format_dims(dims)} draw {trial}"
            exact = None if baseline is None else baseline.run(in_float64(inputs))
            outputs, own = actual.run(inputs), expected.run(inputs)
            judged = len(report.comparisons)
            _judge(report, case, outputs, own, exact)
            failed = not all(c.passed for c in report.comparisons[judged:])
            if failed and len(report.failed_runs) < KEPT_FAILURES:
                ran = {actual.name: outputs, expected.name: own}
                if exact is not None:
                    ran[FLOAT64] = exact
                report.failed_runs.append(FailedRun(case, dict(inputs), ran))
    if spec.streaming is not None and spec.streaming.applies(config.params):
        if spec.streaming.grows is not None:
            _verify_decoding(report, config, actual, expected, baseline, chunk_expected, bound)
        else:
            _verify_streaming(
                report, config, actual, expected, export_dims, baseline, chunk_expected
            )
    elif spec.streaming is not None:
        report.streaming = f"skipped: {spec.streaming.skipped_because()} cannot stream"
    return report


def compare_outputs(
    case: str,
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    tolerance: Tolerance,
    engines: tuple[str, str],
) -> list[Comparison]:
    """Every output of one case; ``engines`` names (actual, expected).

    Integer and boolean outputs (ids, a mask) are compared exactly.
    """
    return [
        compare_arrays(
            name,
            case,
            actual[name],
            reference,
            tolerance if is_float(reference) else EXACT,
            engines,
        )
        for name, reference in expected.items()
    ]


def _verify_streaming(
    report: VerificationReport,
    config: LayerConfig,
    actual: Engine,
    expected: Engine,
    export_dims: Mapping[str, int],
    baseline: Engine | None,
    chunk_expected: bool = False,
) -> None:
    """A long sequence in uneven chunks through ``actual``, against one pass of ``expected``
    (or the same chunks of it, with ``chunk_expected``; and of ``baseline``, in float64,
    for the verdict)."""
    streaming = config.spec.streaming
    assert streaming is not None
    length = report.grid[streaming.dim][-1]
    chunks = streaming_chunks(length, export_dims[streaming.dim])
    whole = config.with_dims({**export_dims, streaming.dim: length})
    inputs = whole.random_inputs(config.seed + 104729, include_optional=True)
    report.streaming = f"{streaming.dim}={length} in chunks {'+'.join(map(str, chunks))}"
    streamed = _run_in_chunks(config, actual, inputs, chunks)
    reference = (
        _run_in_chunks(config, expected, inputs, chunks) if chunk_expected else expected.run(inputs)
    )
    exact = None if baseline is None else baseline.run(in_float64(inputs))
    _judge(report, f"streaming {report.streaming}", streamed, reference, exact)


def _verify_decoding(
    report: VerificationReport,
    config: LayerConfig,
    actual: Engine,
    expected: Engine,
    baseline: Engine | None,
    chunk_expected: bool = False,
    bound: Engine | None = None,
) -> None:
    """Prefill then single-token steps through ``actual``, state carried, against one pass of
    ``expected`` (and ``baseline``) over the whole sequence with the state empty (or, with
    ``chunk_expected``, ``expected`` through the same prefill and steps). ``bound``, the
    same file with its cache in bound buffers longer than the tokens they hold
    (``BoundCacheEngine``), streams each case too, judged the same way.

    A KV cache is where exports break silently: a cache pinned to the traced
    length, a causal mask or rotary offset that ignores the past. Each agrees
    with eager at any one call; only the stream against the whole pass shows
    them. A failed case names the first wrong position and its step.
    """
    streaming = config.spec.streaming
    assert streaming is not None and streaming.grows is not None
    cases = decode_cases(report.grid, streaming)
    prompts = sorted({prompt for _, prompt, _ in cases})
    steps = sorted({count for _, _, count in cases})
    report.streaming = (
        f"decoding: prompt {', '.join(map(str, prompts))} then "
        f"{', '.join(map(str, steps))} single-token steps, through the {streaming.grows} state"
    )
    for number, (dims, prompt, count) in enumerate(cases):
        whole = config.with_dims({**dims, streaming.dim: prompt + count, streaming.grows: 0})
        inputs = whole.random_inputs(config.seed + 104729 + 7919 * number, include_optional=True)
        case = f"decoding {format_dims(dims)} prompt={prompt} steps={count}"
        chunks = [prompt] + [1] * count
        reference = (
            _run_in_chunks(config, expected, inputs, chunks)
            if chunk_expected
            else expected.run(inputs)
        )
        exact = None if baseline is None else baseline.run(in_float64(inputs))
        for engine, named in ((actual, case), (bound, f"{case}, cache bound")):
            if engine is None:
                continue
            try:
                streamed = _run_in_chunks(config, engine, inputs, chunks)
            except _ChunkFailed as failed:
                problem = f"{describe_position(failed.start, prompt)}: {failed.error}"
                report.comparisons.append(
                    Comparison(
                        "(all)", named, passed=False, problem=problem, engines=report.engines
                    )
                )
                continue
            judged = _judge(report, named, streamed, reference, exact)
            if not all(comparison.passed for comparison in judged):
                truth = reference if exact is None or report.tolerance is not None else exact
                where = locate_in_stream(
                    config.spec, judged, streamed, truth, prompt, report.tolerance
                )
                first = len(report.comparisons) - len(judged)
                report.comparisons[first:] = [
                    dataclasses.replace(comparison, case=f"{named}, {where}")
                    for comparison in judged
                ]


def _run_in_chunks(
    config: LayerConfig, engine: Engine, inputs: Mapping[str, np.ndarray], chunks: list[int]
) -> dict[str, np.ndarray]:
    """``engine`` over ``inputs`` in consecutive chunks of the streaming dim, state carried."""
    streaming = config.spec.streaming
    assert streaming is not None
    carried = dict(inputs)
    pieces: dict[str, list[np.ndarray]] = {}
    start = 0
    for size in chunks:
        chunk = {
            name: _slice(array, _axis_of(config, name, streaming.dim, inputs=True), start, size)
            for name, array in carried.items()
        }
        try:
            outputs = engine.run(chunk)
        except LayerportError as error:  # a state the file returned that it cannot take back
            raise _ChunkFailed(start, error) from error
        for name, array in outputs.items():
            pieces.setdefault(name, []).append(array)
        for input_name, output_name in streaming.carry:
            carried[input_name] = outputs[output_name]
        start += size
    streamed = {}
    for tensor in config.spec.outputs:
        axis = _axis_of(config, tensor.name, streaming.dim, inputs=False)
        parts = pieces[tensor.name]
        streamed[tensor.name] = parts[-1] if axis is None else np.concatenate(parts, axis=axis)
    return streamed


class _ChunkFailed(WorkFailed):
    """The engine failed on the chunk that starts at position ``start`` of a stream."""

    def __init__(self, start: int, error: LayerportError) -> None:
        super().__init__(f"{error} (on the chunk from position {start} of the stream)")
        self.start = start
        self.error = error


def _judge(
    report: VerificationReport,
    case: str,
    outputs: Mapping[str, np.ndarray],
    own: Mapping[str, np.ndarray],
    exact: Mapping[str, np.ndarray] | None,
) -> list[Comparison]:
    """One case: by the float64 verdict where ``exact`` is given and no tolerance, else by it.

    ``own`` is the trusted engine's outputs (eager in the file's precision);
    ``exact`` the float64 baseline's, which also prices the precision. Returns
    the case's comparisons, which it adds to the report.
    """
    if exact is None:
        assert report.tolerance is not None
        judged = compare_outputs(case, own, outputs, report.tolerance, report.engines)
    else:
        verdict, costs = judge_outputs(
            case, exact, own, outputs, report.dtype, report.engines, report.output_scales
        )
        report.costs += costs
        judged = (
            verdict
            if report.tolerance is None
            else compare_outputs(case, own, outputs, report.tolerance, report.engines)
        )
    report.comparisons += judged
    return judged


def in_float64(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float inputs widened to float64, for the baseline; ids and masks stay as they are."""
    return {
        name: array.astype(np.float64) if is_float(array) else array
        for name, array in arrays.items()
    }


def _axis_of(config: LayerConfig, name: str, dim: str, *, inputs: bool) -> int | None:
    tensors = config.spec.inputs if inputs else config.spec.outputs
    tensor = next(tensor for tensor in tensors if tensor.name == name)
    return tensor.dims.index(dim) if dim in tensor.dims else None


def _slice(array: np.ndarray, axis: int | None, start: int, size: int) -> np.ndarray:
    if axis is None:
        return array
    index: list[slice] = [slice(None)] * array.ndim
    index[axis] = slice(start, start + size)
    return np.ascontiguousarray(array[tuple(index)])
