"""Graph optimizations of an export, each a candidate that must prove itself.

``export --optimize`` (issue 25) tries each optimizer here on the verified
export; ``layerport.pipeline`` keeps a result only if it keeps every dynamic
dim, verifies on the full grid in every requested runtime, and runs no slower.
The optimizers are maintained tools, not ours:

- ``onnxslim``: onnxslim's simplifier (constant folding, dead-node and
  redundant-op elimination, shape-op folding), standard ops only;
- ``onnxruntime-basic``: onnxruntime's offline graph optimization at the basic
  level, whose rewrites are standard ONNX ops, so the file still runs in any
  runtime (the extended level writes ``com.microsoft`` ops only onnxruntime has).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from layerport.errors import one_line
from layerport.runtime import noise

OPTIMIZERS = ("onnxslim", "onnxruntime-basic")


def optimize(name: str, model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` rewritten by the optimizer ``name`` (one of ``OPTIMIZERS``); the input is untouched.

    Raises ``RuntimeError`` with the optimizer's own words when it fails.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        with noise.captured_chatter():
            optimized = _OPTIMIZERS[name](copy)
    except Exception as error:  # an optimizer's failure is a candidate lost, not an export's
        raise RuntimeError(f"{name} failed: {one_line(error)}") from error
    # onnxruntime declares every domain it knows; a clean file declares those it uses.
    used = {node.domain for node in optimized.graph.node}
    kept = [entry for entry in optimized.opset_import if entry.domain in used | {"", "ai.onnx"}]
    del optimized.opset_import[:]
    optimized.opset_import.extend(kept)
    return optimized


def changed_interface(
    original: onnx.ModelProto, candidate: onnx.ModelProto, *, other_domains: bool = False
) -> str | None:
    """What a candidate changed in the file's inputs and outputs, or ``None``.

    A dim that was symbolic must stay symbolic under the same name: an
    optimizer that folds a shape it saw at the traced size pins it. Ops outside
    the standard domain would tie the file to one runtime, so they count too,
    unless ``other_domains`` (an export form made for one runtime's operators).
    """
    domains = {node.domain for node in candidate.graph.node} - {"", "ai.onnx"}
    if domains and not other_domains:
        return f"it uses ops of {', '.join(sorted(domains))}, which only some runtimes have"
    for kind in ("input", "output"):
        before = {value.name: _dims(value) for value in getattr(original.graph, kind)}
        after = {value.name: _dims(value) for value in getattr(candidate.graph, kind)}
        if set(before) != set(after):
            return f"its {kind}s are {sorted(after)}, not {sorted(before)}"
        for name, dims in before.items():
            if len(after[name]) != len(dims):
                return f"{kind} {name} has {len(after[name])} dims, not {len(dims)}"
            for axis, (was, now) in enumerate(zip(dims, after[name], strict=True)):
                if isinstance(was, str) and was != now:
                    return f"it pins dim {was} of {kind} {name} (axis {axis}) to {now!r}"
    return None


def _dims(value: onnx.ValueInfoProto) -> list[str | int | None]:
    return [
        dim.dim_param
        if dim.HasField("dim_param")
        else dim.dim_value
        if dim.HasField("dim_value")
        else None
        for dim in value.type.tensor_type.shape.dim
    ]


def _onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def _onnxruntime_basic(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="layerport-optimize-") as folder:
        path = Path(folder) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(str(path))


_OPTIMIZERS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "onnxslim": _onnxslim,
    "onnxruntime-basic": _onnxruntime_basic,
}
