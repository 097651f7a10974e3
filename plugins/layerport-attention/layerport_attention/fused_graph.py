"""The fused form's graph: the placeholders torch.onnx writes, rewritten into onnxruntime's
``GroupQueryAttention`` and its fused norms.

The translation of ``layerport_attention::gqa`` (``fused``) writes one
``layerport.attention::FusedAttention`` node; ``finish_fused`` replaces each
with the contrib operator and what it needs computed from the shapes:
``seqlens_k`` (each row's total length minus 1) and ``total_sequence_length``
from the lengths of ``past_key`` and the call. onnxruntime's CPU kernel takes
batch > 1 with seq > 1 only on an empty cache (``batch_size must be 1 when
sequence_length > 1 and past context is given``), so that case, a chunked
prefill of several rows, runs through a ``Scan`` over the rows under an
``If``; a prefill and every single-token step take the operator directly.

``RMSNorm`` becomes standard ops (see ``_rms_norm``), and ``SkipNorm`` (the
residual sum and the norm of it) ``com.microsoft::SkipSimplifiedLayerNormalization``
or ``SkipLayerNormalization``: both sums, and the norm, in one kernel.

Torch-free: onnx only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import onnx
from onnx import TensorProto, helper

PLACEHOLDER_DOMAIN = "layerport.attention"
PLACEHOLDER = "FusedAttention"
RMS_NORM = "RMSNorm"
SKIP_NORM = "SkipNorm"
CONTRIB = "com.microsoft"
# The placeholder's inputs: the packed projections, the cache, the additive mask, the rotary tables.
PLACEHOLDER_INPUTS = ("qkv", "past_key", "past_value", "bias", "cos", "sin")


def register_placeholders() -> None:
    """Declare the placeholders' schemas to onnx, once: torch.onnx writes only ops it knows."""
    if onnx.defs.has(PLACEHOLDER, PLACEHOLDER_DOMAIN):
        return
    schema = onnx.defs.OpSchema
    formal = schema.FormalParameter
    optional = schema.FormalParameterOption.Optional
    floats = [("T", ["tensor(float)", "tensor(float16)"], "")]
    epsilon = schema.Attribute("epsilon", schema.AttrType.FLOAT, "added to the mean square")
    onnx.defs.register_schema(
        schema(
            RMS_NORM,
            PLACEHOLDER_DOMAIN,
            1,
            inputs=[formal("x", "T"), formal("weight", "T")],
            outputs=[formal("normed", "T")],
            type_constraints=floats,
            attributes=[epsilon],
        )
    )
    onnx.defs.register_schema(
        schema(
            SKIP_NORM,
            PLACEHOLDER_DOMAIN,
            1,
            inputs=[
                formal("x", "T"),
                formal("skip", "T"),
                formal("weight", "T"),
                formal("bias", "T", param_option=optional),
            ],
            outputs=[formal("normed", "T"), formal("sum", "T")],
            type_constraints=floats,
            attributes=[
                epsilon,
                schema.Attribute("simplified", schema.AttrType.INT, "1: an RMSNorm"),
            ],
        )
    )
    onnx.defs.register_schema(
        schema(
            PLACEHOLDER,
            PLACEHOLDER_DOMAIN,
            1,
            inputs=[
                formal(name, "T", param_option=optional)
                if name in ("cos", "sin")
                else formal(name, "T")
                for name in PLACEHOLDER_INPUTS
            ],
            outputs=[formal(name, "T") for name in ("y", "present_key", "present_value")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "")],
            attributes=[
                schema.Attribute("num_heads", schema.AttrType.INT, "query heads"),
                schema.Attribute("kv_num_heads", schema.AttrType.INT, "key/value heads"),
                schema.Attribute("scale", schema.AttrType.FLOAT, "the scores' scale"),
            ],
        )
    )


def finish_fused(model: onnx.ModelProto) -> None:
    """Replace every placeholder node of ``model`` with ``GroupQueryAttention``, in place."""
    graph = model.graph
    counter = itertools.count()
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain != PLACEHOLDER_DOMAIN:
            nodes.append(node)
        elif node.op_type == PLACEHOLDER:
            nodes.extend(_expanded(node, f"fused_attention_{next(counter)}", _elem_type(model)))
        else:
            nodes.extend(_norm(node, _elem_type(model)))
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [entry for entry in model.opset_import if entry.domain != PLACEHOLDER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend([*kept, helper.make_opsetid(CONTRIB, 1)])


def _norm(node: onnx.NodeProto, elem_type: int) -> list[onnx.NodeProto]:
    """A norm placeholder as onnxruntime's fused norm, or a lone RMS norm in standard ops."""
    attributes = {
        attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute
    }
    epsilon = float(attributes["epsilon"])
    if node.op_type == RMS_NORM:
        return _rms_norm(node, epsilon, elem_type)
    normed, summed = node.output
    simplified = bool(attributes["simplified"])
    inputs = list(node.input)[: 3 if simplified else 4]
    return [
        helper.make_node(
            "SkipSimplifiedLayerNormalization" if simplified else "SkipLayerNormalization",
            inputs,
            [normed, "", "", summed],
            domain=CONTRIB,
            epsilon=epsilon,
        )
    ]


def _rms_norm(node: onnx.NodeProto, epsilon: float, elem_type: int) -> list[onnx.NodeProto]:
    """``x / sqrt(mean(x * x) + eps) * weight`` over the last axis, in standard ops.

    onnxruntime's ``SimplifiedLayerNormalization`` is registered in the ONNX
    domain, where onnx's checker (which every file passes before a session
    opens it) knows no such op; a block's first norm has no residual to fuse,
    so little is lost.
    """
    x, weight = node.input
    (y,) = node.output
    name = f"{y}_rms"
    constant = helper.make_tensor(f"{name}_eps", elem_type, [], [epsilon])
    axes = helper.make_tensor(f"{name}_axes", TensorProto.INT64, [1], [-1])
    return [
        helper.make_node("Constant", [], [f"{name}_eps"], value=constant),
        helper.make_node("Constant", [], [f"{name}_axes"], value=axes),
        helper.make_node("Mul", [x, x], [f"{name}_square"]),
        helper.make_node("ReduceMean", [f"{name}_square", f"{name}_axes"], [f"{name}_mean"]),
        helper.make_node("Add", [f"{name}_mean", f"{name}_eps"], [f"{name}_shifted"]),
        helper.make_node("Sqrt", [f"{name}_shifted"], [f"{name}_root"]),
        helper.make_node("Div", [x, f"{name}_root"], [f"{name}_normed"]),
        helper.make_node("Mul", [f"{name}_normed", weight], [y]),
    ]


def _elem_type(model: onnx.ModelProto) -> int:
    """The layers' float type, for the branches' outputs: a composed model's first input may
    be token ids, its caches are not."""
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    types = [value.type.tensor_type.elem_type for value in model.graph.input]
    types += [tensor.data_type for tensor in model.graph.initializer]
    return next(int(kind) for kind in types if kind in floats)


def _expanded(node: onnx.NodeProto, prefix: str, elem_type: int) -> list[onnx.NodeProto]:
    """The nodes that compute ``node``'s outputs through ``GroupQueryAttention``."""
    qkv, past_key, past_value, bias, *tables = list(node.input) + [""] * (6 - len(node.input))
    cos, sin = tables[0], tables[1]
    attributes = {
        attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute
    }
    y, present_key, present_value = node.output

    def name(part: str) -> str:
        return f"{prefix}/{part}"

    def shape_at(value: str, axis: int) -> onnx.NodeProto:
        return helper.make_node(
            "Shape", [value], [name(f"{value}_{axis}")], start=axis, end=axis + 1
        )

    contrib: dict[str, Any] = {
        "num_heads": int(attributes["num_heads"]),
        "kv_num_heads": int(attributes["kv_num_heads"]),
        "scale": float(attributes["scale"]),
        "do_rotary": int(bool(cos)),
        "rotary_interleaved": 0,  # Llama's rotation by halves
    }

    def attention(
        inputs: tuple[str, str, str, str], seqlens: str, outputs: list[str]
    ) -> onnx.NodeProto:
        query, key_cache, value_cache, mask = inputs
        return helper.make_node(
            "GroupQueryAttention",
            [query, "", "", key_cache, value_cache, seqlens, name("total"), cos, sin, "", mask],
            outputs,
            domain=CONTRIB,
            **contrib,
        )

    nodes = [
        shape_at(qkv, 0),
        shape_at(qkv, 1),
        shape_at(past_key, 2),
        helper.make_node("Add", [name(f"{past_key}_2"), name(f"{qkv}_1")], [name("total64")]),
        helper.make_node("Cast", [name("total64")], [name("total1")], to=TensorProto.INT32),
        helper.make_node("Squeeze", [name("total1")], [name("total")]),
        helper.make_node(
            "Constant", [], [name("one")], value=helper.make_tensor("", TensorProto.INT32, [1], [1])
        ),
        helper.make_node("Sub", [name("total1"), name("one")], [name("last1")]),
        helper.make_node("Expand", [name("last1"), name(f"{qkv}_0")], [name("seqlens")]),
        # A chunk of several tokens after a cache, in several rows: the kernel's one refusal.
        helper.make_node(
            "Constant",
            [],
            [name("one64")],
            value=helper.make_tensor("", TensorProto.INT64, [1], [1]),
        ),
        helper.make_node(
            "Constant",
            [],
            [name("zero64")],
            value=helper.make_tensor("", TensorProto.INT64, [1], [0]),
        ),
        helper.make_node("Greater", [name(f"{qkv}_1"), name("one64")], [name("chunk")]),
        helper.make_node("Greater", [name(f"{past_key}_2"), name("zero64")], [name("cached")]),
        helper.make_node("Greater", [name(f"{qkv}_0"), name("one64")], [name("rows")]),
        helper.make_node("And", [name("chunk"), name("cached")], [name("chunk_cached")]),
        helper.make_node("And", [name("chunk_cached"), name("rows")], [name("by_row1")]),
        helper.make_node("Squeeze", [name("by_row1")], [name("by_row")]),
        helper.make_node(
            "If",
            [name("by_row")],
            [y, present_key, present_value],
            then_branch=_by_row((qkv, past_key, past_value, bias), attention, name, elem_type),
            else_branch=helper.make_graph(
                [
                    attention(
                        (qkv, past_key, past_value, bias),
                        name("seqlens"),
                        [name(f"direct_{o}") for o in "ykv"],
                    )
                ],
                name("direct"),
                [],
                [
                    helper.make_tensor_value_info(name(f"direct_{o}"), elem_type, None)
                    for o in "ykv"
                ],
            ),
        ),
    ]
    return nodes


Attend = Callable[[tuple[str, str, str, str], str, list[str]], onnx.NodeProto]


def _by_row(
    inputs: tuple[str, str, str, str],
    attention: Attend,
    name: Callable[[str], str],
    elem_type: int,
) -> onnx.GraphProto:
    """A ``Scan`` over the batch, each row through the operator as a batch of one."""
    row_inputs = [name(f"row_{value}") for value in ("qkv", "key", "value", "bias")]
    batched = [name(f"one_{value}") for value in ("qkv", "key", "value", "bias")]
    body_nodes = [
        helper.make_node(
            "Constant",
            [],
            [name("axis0")],
            value=helper.make_tensor("", TensorProto.INT64, [1], [0]),
        ),
        *(
            helper.make_node("Unsqueeze", [row, name("axis0")], [one])
            for row, one in zip(row_inputs, batched, strict=True)
        ),
        attention(
            (batched[0], batched[1], batched[2], batched[3]),
            name("last1"),
            [name(f"one_out_{o}") for o in "ykv"],
        ),
        *(
            helper.make_node(
                "Squeeze", [name(f"one_out_{o}"), name("axis0")], [name(f"row_out_{o}")]
            )
            for o in "ykv"
        ),
    ]
    body = helper.make_graph(
        body_nodes,
        name("row"),
        [helper.make_tensor_value_info(row, elem_type, None) for row in row_inputs],
        [helper.make_tensor_value_info(name(f"row_out_{o}"), elem_type, None) for o in "ykv"],
    )
    scan = helper.make_node(
        "Scan", list(inputs), [name(f"rows_{o}") for o in "ykv"], body=body, num_scan_inputs=4
    )
    return helper.make_graph(
        [scan],
        name("by_rows"),
        [],
        [helper.make_tensor_value_info(name(f"rows_{o}"), elem_type, None) for o in "ykv"],
    )
