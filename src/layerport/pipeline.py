"""Where export, verification and the file's record meet.

Each stage does one job and knows nothing of the others: ``eager.build`` makes
the module, ``export.torch_onnx`` turns it into a clean ``ModelProto``,
``verify`` runs two engines over the grid, and ``runtime.metadata`` is the record
the file carries. This module calls them in order:

- ``export_layer``: build, export, verify (unless told not to), then build the
  record once and write it into the model once;
- ``verify_layer``: the same without keeping the file, for ``verify LAYER``;
- ``verify_file``: rebuild an exported file's layer from its record
  (``verify.rebuild``), and verify the file against it.

A served model is verified by ``verify.server.verify_server``, beside the
engine that runs it.

A file that fails verification is never returned, so it is never written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from layerport import __version__
from layerport.config import LayerConfig
from layerport.dtypes import Tolerance
from layerport.errors import BadFile, ExportFailed, UserInputError, VerificationFailed, WorkFailed
from layerport.export import DEFAULT_OPSET
from layerport.registry import Registry
from layerport.results import ExportResult
from layerport.runtime.external import ExternalModel, Model, proto_of
from layerport.runtime.inspection import initializer_bytes
from layerport.runtime.limits import format_bytes
from layerport.runtime.metadata import ExportRecord
from layerport.runtime.modelfile import read_model
from layerport.runtime.session import Session, SessionSettings
from layerport.spec.forms import STANDARD, ExportForm
from layerport.verify import DEFAULT_TRIALS, VerifyOptions
from layerport.verify.rebuild import rebuild_layer
from layerport.verify.report import VerificationReport, note_plugin_version, note_underflow
from layerport.verify.verdict import judged_tolerance

if TYPE_CHECKING:
    from torch import nn

    from layerport.runtime.runtimes import NamedRuntime
    from layerport.verify.engines import Engine


def export_layer(
    config: LayerConfig,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    tolerance: Tolerance | None = None,
    trials: int = DEFAULT_TRIALS,
    quantize: str | None = None,
    external_data: bool = False,
    optimize: bool = False,
    runtimes: Sequence[NamedRuntime] = (),
    form: str | None = None,
) -> ExportResult:
    """Export ``config``'s layer to ONNX and, unless ``verify`` is false, verify it.

    ``form`` names one of the layer's export forms (``LayerSpec.forms``) to
    export in instead of the standard one; ``UserInputError`` if the layer has
    no such form or its configuration cannot take it.

    With ``optimize``, each graph optimizer (``export.optimize``) rewrites the
    verified file, and the fastest rewrite that keeps every dynamic dim and
    verifies on the full grid, in onnxruntime and each of ``runtimes``, is
    kept; the record says what was tried and measured (``_optimized``).

    With ``external_data``, the result is written with its initializers in a
    data file beside the model (``ExportResult.files``).

    ``quantize="int8"`` quantizes the float32 export with onnxruntime's dynamic
    quantizer (``export.quantize``); it is verified against a run of the same
    quantization (``verify.quantized``), within the layer's int8 tolerance.
    Raises ``VerificationFailed`` (with ``.report`` attached) when the export
    does not compute what eager PyTorch computes,
    ``ExportFailed`` when torch.onnx cannot export the layer or pins a dynamic
    dim, ``UserInputError`` for a quantization of anything but float32, or of a
    layer where nothing would be quantized.
    """
    from layerport.eager.build import build_module
    from layerport.export.quantize import check_quantizable
    from layerport.export.torch_onnx import check_exportable, count_nodes

    check_exportable(config, opset)
    check_quantizable(config, quantize)
    chosen = chosen_form(config, form)
    started = time.perf_counter()
    module = build_module(config)
    model = source = _export(module, config, opset, chosen)
    quantization = None
    if quantize is not None:
        from layerport.export.quantize import quantize_int8

        if isinstance(source, ExternalModel):
            raise UserInputError(
                f"{config.spec.name} has {format_bytes(source.data_bytes)} of weights, past "
                "protobuf's 2 GiB; quantizing a model that large is not supported"
            )
        model, quantization = quantize_int8(source, config.spec.name)
    export_seconds = time.perf_counter() - started

    started = time.perf_counter()
    report = None
    if verify:
        report = verify_model(
            config,
            module,
            model,
            tolerance=tolerance or judged_tolerance(config, quantize=quantize),
            trials=trials,
            quantize=quantize,
            source=source,
        )
        if not report.passed:
            raise VerificationFailed(report.failure_message(), report=report)
    optimization = None
    if optimize:
        if report is None or quantize is not None:
            raise UserInputError("an optimization is kept only when a float export verifies")
        if not isinstance(model, onnx.ModelProto):
            raise UserInputError(
                "graph optimizers take the whole model in memory; weights past 2 GiB are "
                "kept outside it, so this export cannot be optimized"
            )
        model, report, optimization = _optimized(
            config, module, model, report, tolerance, trials, runtimes, opset
        )
    record = export_record(config, module, opset, report, quantization)
    kept_form = optimization["form"] if optimization else (form or STANDARD)
    record = dataclasses.replace(record, optimization=optimization, form=kept_form)
    proto = proto_of(model)
    record.write_to(proto)
    return ExportResult(
        config=config,
        model_bytes=proto.SerializeToString(deterministic=True),
        record=record,
        node_count=count_nodes(proto.graph),
        weight_bytes=initializer_bytes(proto),
        report=report,
        export_seconds=export_seconds,
        verify_seconds=time.perf_counter() - started,
        external_data=external_data or isinstance(model, ExternalModel),
        external_tensors=model.tensors if isinstance(model, ExternalModel) else {},
    )


# How much faster an optimized form must run to be kept (export --optimize).
_SPEED_MARGIN = 0.03


def _optimized(
    config: LayerConfig,
    module: nn.Module,
    model: onnx.ModelProto,
    report: VerificationReport,
    tolerance: Tolerance | None,
    trials: int,
    runtimes: Sequence[NamedRuntime],
    opset: int,
) -> tuple[onnx.ModelProto, VerificationReport, dict[str, Any]]:
    """The fastest optimized form of a verified ``model`` that proves itself, or ``model``.

    The candidates are each graph optimizer's rewrite of ``model`` and the
    layer's other export forms (``LayerSpec.forms``, whose ops may be one
    runtime's). Each candidate must keep the file's inputs, outputs and symbolic dims,
    verify on the full grid as the export did (in each of ``runtimes`` too), and
    then run faster than the export: the verified candidates and the export
    are timed side by side, interleaved (``bench.timing``), at the traced size,
    or a decoder at a decode step (``_timed_inputs``).
    Returns the model kept, its report, and what was tried, for the record,
    whose ``form`` names the export form the model kept is in.
    """
    from layerport.bench.timing import TimingSettings, time_engines
    from layerport.export.optimize import OPTIMIZERS, changed_interface, optimize
    from layerport.export.torch_onnx import count_nodes

    def measured(candidate: onnx.ModelProto) -> dict[str, Any]:
        return {"nodes": count_nodes(candidate.graph), "bytes": candidate.ByteSize()}

    tried: dict[str, dict[str, Any]] = {}
    verified: dict[str, tuple[onnx.ModelProto, VerificationReport]] = {}
    forms = {form.name: form for form in config.spec.forms}
    for name in [*OPTIMIZERS, *forms]:
        try:
            candidate = (
                _in_form(module, config, opset, forms[name])
                if name in forms
                else optimize(name, model)
            )
        except RuntimeError as error:
            tried[name] = {"refused": str(error)}
            continue
        tried[name] = measured(candidate)
        problem = changed_interface(model, candidate, other_domains=name in forms)
        if problem is None:
            candidate_report = verify_model(
                config, module, candidate, tolerance=tolerance, trials=trials, runtimes=runtimes
            )
            if candidate_report.passed:
                verified[name] = (candidate, candidate_report)
                continue
            problem = f"it fails verification: {candidate_report.failure_message()}"
        tried[name]["refused"] = problem
    inputs = _timed_inputs(config)
    optional = [tensor.name for tensor in config.spec.inputs if tensor.optional]
    sessions = {
        name: Session(candidate, f"the {name} form of {config.spec.name}", optional_inputs=optional)
        for name, (candidate, _) in {"export": (model, report), **verified}.items()
    }
    calls: dict[str, Callable[[], object]] = {
        name: partial(session.run, inputs) for name, session in sessions.items()
    }
    samples = time_engines(calls, TimingSettings(min_seconds=0.3, min_calls=20))
    medians = {name: float(np.median(durations)) / 1e6 for name, durations in samples.items()}
    for name in verified:
        tried[name]["median_ms"] = round(medians[name], 4)
    # Timing noise on a shared machine is a few percent: a rewrite within it is not a gain.
    faster = [name for name in verified if medians[name] < (1 - _SPEED_MARGIN) * medians["export"]]
    for name in set(verified) - set(faster):
        change = medians[name] / medians["export"] - 1
        tried[name]["refused"] = f"it is not {_SPEED_MARGIN:.0%} faster ({change:+.1%})"
    kept = min(faster, key=lambda name: medians[name]) if faster else None
    summary = {
        "kept": kept,
        "form": kept if kept in forms else STANDARD,
        "before": {**measured(model), "median_ms": round(medians["export"], 4)},
        "tried": tried,
    }
    if kept is None:
        return model, report, summary
    candidate, candidate_report = verified[kept]
    return candidate, candidate_report, summary


# A decoder spends its time in single-token steps over a long cache: its forms
# are timed there (at most the declared maximum), not at the traced chunk.
_TIMED_PAST = 512


def _timed_inputs(config: LayerConfig) -> dict[str, np.ndarray]:
    """What the candidates are timed on: the traced size, or for a layer whose state grows
    (a KV cache), one decode step after ``_TIMED_PAST`` tokens, in one row, as ``generate``
    decodes."""
    streaming = config.spec.streaming
    if streaming is None or streaming.grows is None or not streaming.applies(config.params):
        return config.random_inputs()
    largest = config.spec.dim(streaming.grows).max_size
    past = _TIMED_PAST if largest is None else min(_TIMED_PAST, largest)
    step = {**config.dims, streaming.dim: 1, streaming.grows: past}
    if config.spec.batch_dim is not None:
        step[config.spec.batch_dim] = 1
    return config.with_dims(step).random_inputs()


def _in_form(
    module: nn.Module, config: LayerConfig, opset: int, form: ExportForm
) -> onnx.ModelProto:
    """``module`` exported in ``form``; ``RuntimeError`` saying why it cannot be."""
    from layerport.export.torch_onnx import export_onnx

    refusal = form.refuses(config.params, config.dtype)
    if refusal is not None:
        raise RuntimeError(refusal)
    try:
        return export_onnx(module, config, opset, form=form)
    except ExportFailed as error:
        raise RuntimeError(str(error)) from error


def _bound_engine(config: LayerConfig, session: Session) -> Engine | None:
    """The file with its KV cache in bound buffers, as ``generate`` runs it, where it can be
    (``runtime.bound``): its stream proof runs that way too."""
    from layerport.runtime.bound import bound_session
    from layerport.verify.engines import BoundCacheEngine

    streaming = config.spec.streaming
    if streaming is None or streaming.grows is None:
        return None
    variant = bound_session(session, streaming.carry)
    if variant is None:
        return None
    return BoundCacheEngine(variant, streaming.carry, slack=BOUND_SLACK)


# Room a verified bound cache keeps past the call: a file that took the buffer's
# length for the cache's would read these zeros as keys, and fail.
BOUND_SLACK = 5


def verify_layer(
    config: LayerConfig,
    *,
    opset: int = DEFAULT_OPSET,
    tolerance: Tolerance | None = None,
    trials: int = DEFAULT_TRIALS,
) -> VerificationReport:
    """Export ``config``'s layer in memory and verify it; the report says whether it passed."""
    from layerport.eager.build import build_module
    from layerport.export.torch_onnx import check_exportable

    check_exportable(config, opset)
    module = build_module(config)
    model = _export(module, config, opset)
    return verify_model(config, module, model, tolerance=tolerance, trials=trials)


def chosen_form(config: LayerConfig, name: str | None) -> ExportForm | None:
    """The layer's export form ``name`` (``None``: the standard one), checked against the
    configuration; ``UserInputError`` naming the forms there are, or why this one cannot be."""
    if name is None or name == STANDARD:
        return None
    forms = {form.name: form for form in config.spec.forms}
    if name not in forms:
        raise UserInputError(
            f"layer {config.spec.name!r} has the export forms {', '.join([STANDARD, *forms])}, "
            f"not {name!r}"
        )
    refusal = forms[name].refuses(config.params, config.dtype)
    if refusal is not None:
        raise UserInputError(f"layer {config.spec.name!r} cannot be exported {name}: {refusal}")
    return forms[name]


def _export(
    module: nn.Module, config: LayerConfig, opset: int, form: ExportForm | None = None
) -> Model:
    """``export_onnx``, but a layer whose outputs contradict its spec is blamed first.

    torch.onnx reports such a layer as a pinned dim; one eager pass says what is
    really wrong (``run_module`` checks every output's shape against the spec).
    """
    from layerport.eager.build import run_module
    from layerport.export.torch_onnx import export_model

    try:
        return export_model(module, config, opset, form=form)
    except ExportFailed:
        run_module(module, config, config.random_inputs(include_optional=True))
        raise


def verify_file(
    registry: Registry,
    path: Path,
    options: VerifyOptions | None = None,
    *,
    second_opinion: bool = False,
    runtimes: Sequence[NamedRuntime] = (),
) -> tuple[LayerConfig, VerificationReport]:
    """Rebuild the layer an exported file records, and verify the file against it.

    ``options`` say which weights the export was made from, the sizes to build
    the grid around and any fixed tolerance (``VerifyOptions``);
    ``second_opinion`` also checks onnxruntime against onnx's reference
    evaluator (see ``verify_model``), and ``runtimes`` runs the file in each of
    them too (the runtime matrix). Returns the rebuilt configuration and the
    report.
    """
    options = options or VerifyOptions()
    model = read_model(path)
    record = ExportRecord.from_model(proto_of(model))
    if record is None:
        raise BadFile(
            f"{path} was not exported by layerport (it has no layerport metadata), so "
            "verify cannot rebuild its layer; 'layerport inspect' and 'infer' still work on it"
        )
    config, module = rebuild_layer(registry, record, weights=options.weights, dims=options.dims)
    # An int8 file is judged against the same quantization of the layer's float32 export.
    source = _export(module, config, record.opset) if record.quantize else None
    report = verify_model(
        config,
        module,
        model,
        name=str(path),
        optional_inputs=record.optional_inputs,
        tolerance=judged_tolerance(config, options.atol, options.rtol, quantize=record.quantize),
        trials=options.trials,
        quantize=record.quantize,
        second_opinion=second_opinion,
        source=source,
        runtimes=runtimes,
    )
    note_underflow(report, config)
    note_plugin_version(report, config, record, "file")
    return config, report


def verify_model(
    config: LayerConfig,
    module: nn.Module,
    model: Model,
    *,
    name: str | None = None,
    optional_inputs: list[str] | None = None,
    tolerance: Tolerance | None = None,
    trials: int = DEFAULT_TRIALS,
    quantize: str | None = None,
    second_opinion: bool = False,
    source: Model | None = None,
    runtimes: Sequence[NamedRuntime] = (),
) -> VerificationReport:
    """Verify ``model`` against ``module`` in eager PyTorch, in the dtype's declared runtime.

    ``quantize`` names the recipe of a quantized ``model``, made from ``source``,
    the layer's float32 export: ``model`` is then held to the same quantization of
    ``source`` (``verify.quantized``), and its cost measured against float64. With
    ``second_opinion``, the file also runs in onnx's reference evaluator over the
    same grid (one draw per size: it is 7x to 20x slower), which must agree with
    onnxruntime within the same tolerance: a disagreement is a runtime's bug.
    Each of ``runtimes`` runs the same grid, with the same trials, judged the
    same way (a quantized ``model`` against the same quantization;
    ``report.runtimes``); one that cannot run the file at all is in
    ``report.runtime_errors``. Either fails the report.

    onnxruntime runs the file, or onnx's reference evaluator for a precision the
    spec declares that way (``LayerSpec.precisions``). Unless ``tolerance`` is
    given, a float file is judged against the layer in float64, built from the
    same source weights, by what eager in its precision itself loses
    (``verify.verdict``); the report gives both figures.

    ``optional_inputs`` are the inputs the model may be run without (default:
    the spec's optional inputs). A ``name`` says the model came from that file,
    whose session is then created in a child process first (see
    ``runtime.isolation``).
    """
    from layerport.verify.engines import EagerEngine, FileEngine, float64_baseline
    from layerport.verify.structure import structure_problems
    from layerport.verify.verdict import bounded_output_scales
    from layerport.verify.verification import verify_engines

    if optional_inputs is None:
        optional_inputs = [tensor.name for tensor in config.spec.inputs if tensor.optional]
    # Built before the session: converting the weights to float64 briefly holds
    # them twice, which should not add to onnxruntime's copy (2.16 GB of linear
    # weights peak 2.2 GB lower so).
    baseline = float64_baseline(config)
    session = Session(
        model,
        name or f"the export of {config.spec.name}",
        SessionSettings(runtime=config.spec.precisions[config.dtype]),
        optional_inputs=optional_inputs,
        isolate=name is not None,  # a file from disk may crash onnxruntime; our exports are guarded
        smallest=config.min_dims(),
    )
    expected: Engine = EagerEngine(module, config)
    if quantize is not None:
        expected = _same_quantization(model, source, session.name, optional_inputs, config)
    report = verify_engines(
        config,
        FileEngine(session),
        expected,
        config.dims,
        tolerance=tolerance,
        trials=trials,
        structure_problems=structure_problems(config, session.inputs, session.outputs),
        baseline=baseline,
        # int8 quantizes each call's activations over that call's range.
        chunk_expected=quantize is not None,
        output_scales=bounded_output_scales(proto_of(model)),
        bound=_bound_engine(config, session),
    )
    report.quantization = quantize
    if quantize is not None and not report.passed:
        _explain_int8_failure(report, config, session, model, source, optional_inputs)
    elif not report.passed:
        from layerport.verify.pinpoint import pinpoint_layer

        imports = proto_of(model).opset_import
        opset = next((o.version for o in imports if o.domain in ("", "ai.onnx")), 18)
        pinpointed = pinpoint_layer(config, report, opset, session.settings)
        if pinpointed is not None:
            report.notes.append(pinpointed)
    note_underflow(report, config)
    if second_opinion and session.runtime != "onnx-reference":
        reference = Session(
            model,
            session.name,
            SessionSettings(runtime="onnx-reference"),
            optional_inputs=optional_inputs,
            smallest=config.min_dims(),
        )
        # The file in the second runtime, judged as the first was: a failure there
        # after a pass here is a runtime's bug.
        report.second_opinion = verify_engines(
            config,
            FileEngine(reference),
            EagerEngine(module, config),
            config.dims,
            tolerance=report.tolerance,
            trials=1,
            baseline=baseline,
            output_scales=report.output_scales,
        )
    elif second_opinion:
        report.notes.append(
            f"no second opinion: {config.dtype} files are verified in onnx-reference already"
        )
    for runtime in runtimes:
        # A runtime that cannot open or run the file fails the matrix, not the command.
        try:
            other = runtime.open(
                model, session.name, optional_inputs=optional_inputs, smallest=config.min_dims()
            )
            # An int8 file is held to the same quantization in every runtime, as in onnxruntime.
            report.runtimes[runtime.name] = verify_engines(
                config,
                FileEngine(other, runtime.name),
                expected if quantize is not None else EagerEngine(module, config),
                config.dims,
                tolerance=report.tolerance,
                trials=trials,
                baseline=baseline,
                chunk_expected=quantize is not None,
                output_scales=report.output_scales,
            )
        except (WorkFailed, BadFile) as error:
            report.runtime_errors[runtime.name] = str(error)
    return report


def _same_quantization(
    model: Model,
    source: Model | None,
    name: str,
    optional_inputs: list[str],
    config: LayerConfig,
    saturating: bool = False,
) -> Engine:
    """The int8 reference for ``model`` (``verify.quantized``), from its float32 ``source``,
    taking the inputs ``config``'s layer takes (an empty KV cache included)."""
    from layerport.export.quantize import gemm_as_matmul
    from layerport.verify.quantized import SameQuantizationEngine

    if source is None:
        raise ValueError("an int8 model is verified against its float32 source; none given")
    return SameQuantizationEngine(
        proto_of(model),
        gemm_as_matmul(proto_of(source)),
        name,
        optional_inputs=optional_inputs,
        smallest=config.min_dims(),
        saturating=saturating,
    )


def _explain_int8_failure(
    report: VerificationReport,
    config: LayerConfig,
    session: Session,
    model: Model,
    source: Model | None,
    optional_inputs: list[str],
) -> None:
    """Note saturation first when onnxruntime computed the saturating arithmetic."""
    from layerport.verify.quantized import saturation_note

    inputs = config.random_inputs(config.seed, include_optional=True)
    exact = _same_quantization(model, source, session.name, optional_inputs, config)
    saturating = _same_quantization(model, source, session.name, optional_inputs, config, True)
    note = saturation_note(session.run(inputs), exact.run(inputs), saturating.run(inputs))
    if note is not None:
        report.notes.insert(0, note)


def export_record(
    config: LayerConfig,
    module: nn.Module,
    opset: int,
    report: VerificationReport | None,
    quantization: dict[str, Any] | None = None,
) -> ExportRecord:
    """The metadata an export of ``module``, built for ``config``, carries.

    ``report`` is its verification, if any. Weights loaded from a file are
    recorded by their content before any conversion (``tensors_sha256`` of the
    layer's tensors as the file holds them) and their dtype, so the same
    tensors saved in another container or key order verify the file too.
    """
    import torch

    from layerport.weights import tensors_sha256

    checkpoint = config.checkpoint
    return ExportRecord(
        layer=config.spec.name,
        qualified_name=config.layer.qualified_name,
        params=dict(config.params),
        plugin=config.layer.plugin.name,
        plugin_version=config.layer.plugin.version,
        dtype=config.dtype,
        dynamic_dims=dict(config.dims),
        optional_inputs=[tensor.name for tensor in config.spec.inputs if tensor.optional],
        opset=opset,
        versions={"layerport": __version__, "torch": torch.__version__, "onnx": onnx.__version__},
        seed=None if config.weights else config.seed,
        weights_sha256=tensors_sha256(checkpoint.tensors) if checkpoint else None,
        weights_prefix=config.weights_prefix if isinstance(config.weights_prefix, str) else None,
        weights_parts=dict(config.weights_prefix)
        if isinstance(config.weights_prefix, Mapping)
        else None,
        weights_key=checkpoint.key if checkpoint else None,
        weights_dtype=config.weights_dtype,
        quantization=quantization,
        min_dims=config.min_dims() or None,
        max_dims={d.name: d.max_size for d in config.spec.dims if d.max_size is not None} or None,
        input_ranges={name: list(values) for name, values in config.value_ranges().items()} or None,
        model=None if config.model is None else config.model.to_json(_qualified_uses(config)),
        streaming=config.spec.streaming.recorded(config.params) if config.spec.streaming else None,
        verification={"passed": None, "note": "not verified at export"}
        if report is None
        else report.summary(),
    )


def _qualified_uses(config: LayerConfig) -> dict[str, str]:
    """Each layer of a composed model, by name, as ``PLUGIN:LAYER``: what the record keeps."""
    from layerport.model import model_steps

    return {step.name: step.config.layer.qualified_name for step in model_steps(config)}
