"""Known onnxruntime failures: what crashes it, and its errors in one readable line.

onnxruntime 1.32 crashes on some valid graphs while it optimizes them
(``crashes_nchwc_transformer``), and its messages carry C++ locations and
prefixes before the reason (``without_source``); a missing kernel for a
node's types is failed work, not a bad file (``creation_error``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping

import onnx

from layerport.dtypes import element_type_name
from layerport.errors import (
    BadFile,
    LayerportError,
    Setting,
    WorkFailed,
    one_line,
)
from layerport.runtime.modelfile import iter_graphs

# onnxruntime's messages carry the C++ file, line and function that raised, which
# would fill the one error line before the reason: "/onnxruntime_src/.../x.h:91
# onnxruntime::ReshapeHelper::ReshapeHelper(...) size == size was false. The ...".
# The function may follow its return type: "onnxruntime::AutoPadType onnxruntime::StringTo...(...)".
_SOURCE_LOCATION = re.compile(r"\S*onnxruntime_src/\S+:\d+ (?:[\w:<>]+ )?\S*?\(.*?\) ")
_ONNXRUNTIME_PREFIX = re.compile(
    r"^\[ONNXRuntimeError\] : \d+ : \w+ : (?:Exception during initialization: )?"
)


def without_source(message: str) -> str:
    """onnxruntime's message without its error-code prefix and C++ source locations."""
    return _SOURCE_LOCATION.sub("", _ONNXRUNTIME_PREFIX.sub("", message))


def crashes_nchwc_transformer(model: onnx.ModelProto) -> bool:
    """Whether onnxruntime 1.32's NCHWc transformer would crash on ``model``.

    It dereferences a null pointer (SIGSEGV, while the session is created at
    the ``all`` optimization level, on x86-64) on a graph that holds a
    control-flow node (Scan, Loop, If: anything with a subgraph) and feeds a
    Transpose into a MatMul's first input through a Cast: a Cast or CastLike in
    the file, from any type, or the Cast onnxruntime inserts itself before a
    float16 MatMul, which its CPU provider computes in float32. A float16 rnn
    exported through Scan is one (issue 10; microsoft/onnxruntime#28392, closed
    as stale, so re-check on every onnxruntime upgrade). The float32 rnn has the
    same Scan -> Transpose -> MatMul with no Cast, and is safe. Disabling that
    one transformer avoids the crash and keeps NCHWc for every other graph, such
    as float32 Conv models. The check is one pass over the nodes and the types
    the file declares; a MatMul whose types it does not declare counts as
    float16, and any Transpose counts, though those that swap the last two
    axes were not seen to crash.
    """
    types = declared_types(model)
    return any(_holds_crashing_chain(graph, types) for graph in iter_graphs(model.graph))


def _holds_crashing_chain(graph: onnx.GraphProto, types: Mapping[str, int]) -> bool:
    if not any(_has_subgraph(node) for node in graph.node):
        return False
    producers = {output: node for node in graph.node for output in node.output}
    for node in graph.node:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or not node.input:
            continue
        source = producers.get(node.input[0])
        if source is None:
            continue
        if source.op_type in ("Cast", "CastLike") and source.input:
            before = producers.get(source.input[0])
            if before is not None and before.op_type == "Transpose":
                return True
        elif source.op_type == "Transpose":
            known = [
                types[name]
                for name in (*source.input[:1], *node.input, *node.output)
                if name in types
            ]
            if not known or onnx.TensorProto.FLOAT16 in known:
                return True
    return False


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(attribute.HasField("g") or attribute.graphs for attribute in node.attribute)


def declared_types(model: onnx.ModelProto) -> dict[str, int]:
    """The element type of every value the file declares, in any graph, by name."""
    types: dict[str, int] = {}
    for graph in iter_graphs(model.graph):
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                types[value.name] = value.type.tensor_type.elem_type
        for tensor in graph.initializer:
            types[tensor.name] = tensor.data_type
        for node in graph.node:
            if node.op_type == "Cast" and node.output:
                for attribute in node.attribute:
                    if attribute.name == "to":
                        types[node.output[0]] = attribute.i
    return types


# onnxruntime's words when its CPU provider has no kernel for a node's types.
_NO_KERNEL = re.compile(
    r"Could not find an implementation for (\S+?)\(\d+\) node with name '([^']*)'"
)


def creation_error(
    error: Exception, model: onnx.ModelProto, name: str, version: str
) -> LayerportError:
    """The layerport error for onnxruntime's refusal to create a session on ``model``.

    A missing kernel is ``WorkFailed``: the file is valid (it passed onnx's
    checker), and this onnxruntime cannot run it. Anything else is ``BadFile``.
    """
    found = _NO_KERNEL.search(str(error))
    if found is None:
        reason = one_line(without_source(str(error)))
        if _reference_loads(model):
            return BadFile(
                f"onnxruntime {version} cannot load {name}: {reason}; onnx's reference "
                "evaluator loads it (",
                Setting("runtime", "onnx-reference"),
                ")",
            )
        return BadFile(f"onnxruntime {version} cannot load {name}: {reason}")
    op_type, node_name = found.groups()
    dtypes = sorted(set(_input_types(model, op_type, node_name)))
    kernel = f"{dtypes[0]} kernel" if len(dtypes) == 1 else "kernel in this file's types"
    node = f"node {node_name!r}" if node_name else "an unnamed node"
    return WorkFailed(
        f"onnxruntime {version} cannot run {name}: it has no {kernel} for {op_type} ({node}); "
        "onnx's reference evaluator can (",
        Setting("runtime", "onnx-reference"),
        ")",
    )


def _reference_loads(model: onnx.ModelProto) -> bool:
    """Whether onnx's reference evaluator takes ``model``: then it is the runtime to suggest."""
    from onnx.reference import ReferenceEvaluator

    try:
        ReferenceEvaluator(model)
    except Exception:
        return False
    return True


def _input_types(model: onnx.ModelProto, op_type: str, node_name: str) -> Iterator[str]:
    """The type of the first typed input of each node ``op_type`` called ``node_name``.

    The file's declarations, completed by onnx's shape inference where it can.
    """
    # A model onnx cannot infer still has the types it declares.
    with contextlib.suppress(Exception):
        model = onnx.shape_inference.infer_shapes(model)
    types = declared_types(model)
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            if node.op_type == op_type and node.name == node_name:
                typed = [types[value] for value in node.input if value in types]
                if typed:
                    yield element_type_name(typed[0])
