"""Which layer of a composed model makes its export fail: the first one that diverges.

A model's failing output says that something is wrong, not where: an error
born in the second of five layers shows only at the fifth. So, at the first
failing case, the model is exported once more with every layer's outputs kept
as outputs of the file (``layerport.model.compose.exposing_every_layer``: the
same trace, same weights), run in the same runtime on the same inputs, and
each layer's output is judged against its eager twin, in run order, by the
same rule as the model's. The first layer that fails is named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerport.errors import LayerportError, one_line
from layerport.model import model_steps
from layerport.model.compose import exposed_name, exposing_every_layer
from layerport.verify.compare import Comparison
from layerport.verify.report import VerificationReport
from layerport.verify.verdict import bounded_output_scales, judge_outputs
from layerport.verify.verification import compare_outputs, in_float64

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np

    from layerport.config import LayerConfig
    from layerport.runtime.session import SessionSettings


def pinpoint_layer(
    config: LayerConfig, report: VerificationReport, opset: int, settings: SessionSettings
) -> str | None:
    """A sentence naming the first layer whose output diverges at the report's first
    failing case, or ``None`` for a layer (not a model) or a report with no failing case.

    Never raises for the work itself: pinpointing explains a failure that is
    already reported, so a problem here is said in the sentence instead.
    """
    steps = model_steps(config)
    if not steps or not report.failed_runs:
        return None
    from layerport.eager.build import build_module, run_module
    from layerport.export.torch_onnx import export_onnx
    from layerport.runtime.session import Session
    from layerport.verify.engines import float64_baseline

    failed = report.failed_runs[0]
    try:
        exposing = exposing_every_layer(config)
        module = build_module(exposing)
        exported = export_onnx(module, exposing, opset)
        session = Session(exported, "the exposing export", settings, smallest=exposing.min_dims())
        scales = bounded_output_scales(exported)
        inputs = failed.inputs
        actual = session.run(inputs)
        own = run_module(module, exposing, inputs)
        baseline = float64_baseline(exposing)
        exact = baseline.run(in_float64(inputs)) if baseline is not None else None
    except LayerportError as error:
        return f"could not pinpoint the diverging layer: {one_line(error)}"
    for step in steps:
        names = [exposed_name(value) for value in step.values()]
        judged = _judge(
            failed.case,
            {name: own[name] for name in names},
            {name: actual[name] for name in names},
            None if exact is None else {name: exact[name] for name in names},
            report,
            scales,
        )
        failing = [comparison for comparison in judged if not comparison.passed]
        if failing:
            worst = max(failing, key=lambda c: c.overshoot)
            return (
                f"layer {step.name} ({step.config.layer.qualified_name}) is the first whose "
                f"output diverges from its eager twin: {worst.describe()}"
            )
    return (
        f"at {failed.case}, every layer's output is within the rule on its own: the error "
        "builds up across layers"
    )


def _judge(
    case: str,
    own: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    exact: Mapping[str, np.ndarray] | None,
    report: VerificationReport,
    scales: Mapping[str, float],
) -> list[Comparison]:
    """One layer's outputs, judged as the report judged the model's."""
    if report.tolerance is not None or exact is None:
        assert report.tolerance is not None  # float64 files, the only ones without a baseline
        return compare_outputs(case, own, actual, report.tolerance, report.engines)
    judged, _ = judge_outputs(case, exact, own, actual, report.dtype, report.engines, scales)
    return judged
