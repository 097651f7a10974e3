"""The fused form's graph: the placeholders torch.onnx writes, rewritten into onnxruntime's
``GroupQueryAttention`` and its fused norms.

The translation of ``layerport_attention::gqa`` (``fused``) writes one
``layerport.attention::FusedAttention`` node, given the call's sizes (the
graph's own symbolic batch, seq and past, which a model's blocks share) and
the rotary frequencies; ``finish_fused`` replaces each with the contrib
operator and what it needs, computed once per model, not per block:
``seqlens_k`` (each row's total length minus 1), ``total_sequence_length``,
and the rotary tables, held for ``ROTARY_ROWS`` positions and computed from
constants only, so that onnxruntime folds them when it opens the file and a
decode step computes none. Each attention takes the operator directly; an
``If`` sends two rare calls to a slower branch: a sequence longer than the
held tables (which computes its own), and a chunk of several tokens after a
cache in several rows, which onnxruntime's CPU kernel refuses (``batch_size
must be 1 when sequence_length > 1 and past context is given``) and a
``Scan`` runs row by row. Node count is what a decode step pays for here: the
4-block decoder of issue 29 went from 150 nodes to 75 after onnxruntime's
optimizations, and its step at 2 threads from 0.70 to 0.55 ms.

``RMSNorm`` becomes standard ops that onnxruntime fuses (see ``_rms_norm``),
and ``SkipNorm`` (the residual sum and the norm of it)
``com.microsoft::SkipSimplifiedLayerNormalization`` or
``SkipLayerNormalization``: both sums, and the norm, in one kernel.

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
FLOAT = TensorProto.FLOAT
# The placeholder's inputs: the packed projections, the cache, the additive mask, the rotary
# frequencies (float32), then the call's sizes (int64 scalars).
PLACEHOLDER_INPUTS = ("qkv", "past_key", "past_value", "bias")
SIZES = ("batch", "seq", "past")
# Positions the rotary tables hold from the start: onnxruntime computes them once, when it
# opens the file (constant folding); a longer sequence computes its own at each call.
ROTARY_ROWS = 4096


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
                *(
                    formal(name, "T", param_option=optional)
                    if name == "bias"
                    else formal(name, "T")
                    for name in PLACEHOLDER_INPUTS
                ),
                formal("frequencies", "F", param_option=optional),
                *(formal(name, "I") for name in SIZES),
            ],
            outputs=[formal(name, "T") for name in ("y", "present_key", "present_value")],
            type_constraints=[
                ("T", ["tensor(float)", "tensor(float16)"], ""),
                ("F", ["tensor(float)"], ""),
                ("I", ["tensor(int64)"], ""),
            ],
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
    lengths: dict[tuple[str, ...], str] = {}
    for node in graph.node:
        if node.domain != PLACEHOLDER_DOMAIN:
            nodes.append(node)
        elif node.op_type == PLACEHOLDER:
            prefix = f"fused_attention_{next(counter)}"
            nodes.extend(_expanded(node, prefix, _elem_type(model), lengths))
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
    """``x / sqrt(mean(x ** 2) + eps) * weight`` over the last axis, in standard ops.

    onnxruntime's ``SimplifiedLayerNormalization`` is registered in the ONNX
    domain, where onnx's checker (which every file passes before a session
    opens it) knows no such op. Written as ``Pow(x, 2)``, ``ReduceMean``, ``Add``,
    ``Sqrt``, ``Div`` and ``Mul``, it is the pattern onnxruntime's own fusion
    turns into that op when it opens the file (``x * x`` is not): six nodes a
    step does not pay for.
    """
    x, weight = node.input
    (y,) = node.output
    name = f"{y}_rms"
    constant = helper.make_tensor(f"{name}_eps", elem_type, [], [epsilon])
    two = helper.make_tensor(f"{name}_two", elem_type, [], [2.0])
    axes = helper.make_tensor(f"{name}_axes", TensorProto.INT64, [1], [-1])
    return [
        helper.make_node("Constant", [], [f"{name}_eps"], value=constant),
        helper.make_node("Constant", [], [f"{name}_axes"], value=axes),
        helper.make_node("Constant", [], [f"{name}_two"], value=two),
        helper.make_node("Pow", [x, f"{name}_two"], [f"{name}_square"]),
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


def _expanded(
    node: onnx.NodeProto, prefix: str, elem_type: int, shared: dict[tuple[str, ...], str]
) -> list[onnx.NodeProto]:
    """The nodes that compute ``node``'s outputs through ``GroupQueryAttention``.

    What depends only on the call's sizes (the lengths the operator takes, the
    rotary tables) is computed once per distinct ``(batch, seq, past)`` and
    frequencies: ``shared`` maps each to the prefix of the nodes that computed
    it, so a model's blocks, which share their sizes, share them.

    The call takes the operator directly, with the rotary tables onnxruntime
    folded into constants (``_held_tables``). Two rare calls take a slower
    branch of an ``If``, which computes its own tables: a sequence longer than
    those tables, and a chunk of several tokens after a cache in several rows,
    which the kernel refuses (``batch_size must be 1 when sequence_length > 1
    and past context is given``) and a ``Scan`` runs row by row.
    """
    qkv, past_key, past_value, bias, frequencies, *sizes = node.input
    attributes = {
        attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute
    }
    y, present_key, present_value = node.output
    nodes = []
    if tuple(sizes) not in shared:
        shared[tuple(sizes)] = prefix
        nodes += _lengths(prefix, *sizes)
    lengths = shared[tuple(sizes)]
    held = ("", "")
    slow = f"{lengths}/by_row"
    if frequencies:
        key = (*sizes, frequencies)
        if key not in shared:
            shared[key] = prefix
            nodes += _held_tables(prefix, frequencies, elem_type)
            nodes += [
                helper.make_node(
                    "Greater",
                    [f"{lengths}/total64", f"{prefix}/rotary_rows"],
                    [f"{prefix}/longer"],
                ),
                helper.make_node(
                    "Or", [f"{lengths}/by_row", f"{prefix}/longer"], [f"{prefix}/slow"]
                ),
            ]
        tables = shared[key]
        held = (f"{tables}/rotary_held_cos", f"{tables}/rotary_held_sin")
        slow = f"{tables}/slow"

    def name(part: str) -> str:
        return f"{prefix}/{part}"

    contrib: dict[str, Any] = {
        "num_heads": int(attributes["num_heads"]),
        "kv_num_heads": int(attributes["kv_num_heads"]),
        "scale": float(attributes["scale"]),
        "do_rotary": int(bool(frequencies)),
        "rotary_interleaved": 0,  # Llama's rotation by halves
    }

    def attention(tables: tuple[str, str]) -> Attend:
        def node(
            inputs: tuple[str, str, str, str], seqlens: str, outputs: list[str]
        ) -> onnx.NodeProto:
            query, key_cache, value_cache, mask = inputs
            return helper.make_node(
                "GroupQueryAttention",
                [
                    query,
                    "",
                    "",
                    key_cache,
                    value_cache,
                    seqlens,
                    f"{lengths}/total",
                    *tables,
                    "",
                    mask,
                ],
                outputs,
                domain=CONTRIB,
                **contrib,
            )

        return node

    def direct(tag: str, tables: tuple[str, str], before: list[onnx.NodeProto]) -> onnx.GraphProto:
        outputs = [name(f"{tag}_{o}") for o in "ykv"]
        call = attention(tables)((qkv, past_key, past_value, bias), f"{lengths}/seqlens", outputs)
        return helper.make_graph(
            [*before, call],
            name(tag),
            [],
            [helper.make_tensor_value_info(output, elem_type, None) for output in outputs],
        )

    computed: list[onnx.NodeProto] = []
    computed_tables = ("", "")
    if frequencies:
        computed = _tables(
            name("rotary_computed"), frequencies, _fallback_length(f"{lengths}/total64"), elem_type
        )
        computed_tables = (name("rotary_computed_cos"), name("rotary_computed_sin"))
    by_row = _by_row(
        (qkv, past_key, past_value, bias),
        attention(computed_tables),
        name,
        f"{lengths}/last1",
        elem_type,
    )
    slow_branch = helper.make_graph(
        [
            *computed,
            helper.make_node(
                "If",
                [f"{lengths}/by_row"],
                [name(f"slow_{o}") for o in "ykv"],
                then_branch=by_row,
                else_branch=direct("long", computed_tables, []),
            ),
        ],
        name("slow"),
        [],
        [helper.make_tensor_value_info(name(f"slow_{o}"), elem_type, None) for o in "ykv"],
    )
    nodes.append(
        helper.make_node(
            "If",
            [slow],
            [y, present_key, present_value],
            then_branch=slow_branch,
            else_branch=direct("direct", held, []),
        )
    )
    return nodes


def _held_tables(prefix: str, frequencies: str, elem_type: int) -> list[onnx.NodeProto]:
    """``{prefix}/rotary_held_cos`` and ``_sin`` for positions 0 to ``ROTARY_ROWS``, and
    ``{prefix}/rotary_rows``: computed from constants only, so onnxruntime folds them into
    constants when it opens the file, and the operator reads them where they are."""
    rows = helper.make_tensor("", TensorProto.INT64, [], [ROTARY_ROWS])
    return [
        helper.make_node("Constant", [], [f"{prefix}/rotary_rows"], value=rows),
        *_tables(f"{prefix}/rotary_held", frequencies, f"{prefix}/rotary_rows", elem_type),
    ]


def _tables(prefix: str, frequencies: str, length: str, elem_type: int) -> list[onnx.NodeProto]:
    """``{prefix}_cos`` and ``{prefix}_sin``, ``(length, head_dim / 2)``: row p is position
    p's, as the operator reads them. The angles are float32 products of the position and
    ``frequencies``, as the eager module's ``rotary_tables``, then cast to the layer's type."""

    def name(part: str) -> str:
        return f"{prefix}_{part}"

    def constant(part: str, value: int, dims: list[int]) -> onnx.NodeProto:
        tensor = helper.make_tensor("", TensorProto.INT64, dims, [value])
        return helper.make_node("Constant", [], [name(part)], value=tensor)

    nodes = [
        constant("zero", 0, []),
        constant("step", 1, []),
        constant("axis1", 1, [1]),
        helper.make_node("Range", [name("zero"), length, name("step")], [name("positions")]),
        helper.make_node("Cast", [name("positions")], [name("float")], to=FLOAT),
        helper.make_node("Unsqueeze", [name("float"), name("axis1")], [name("column")]),
        helper.make_node("Mul", [name("column"), frequencies], [name("angles")]),
    ]
    for part, op in (("cos", "Cos"), ("sin", "Sin")):
        if elem_type == FLOAT:
            nodes.append(helper.make_node(op, [name("angles")], [name(part)]))
        else:
            nodes.append(helper.make_node(op, [name("angles")], [name(f"{part}_float")]))
            nodes.append(
                helper.make_node("Cast", [name(f"{part}_float")], [name(part)], to=elem_type)
            )
    return nodes


def _fallback_length(total: str) -> str:
    """The positions a sequence past ``ROTARY_ROWS`` computes tables for: all of its own,
    from 0 to its total (a function of its own, so a test can break it)."""
    return total


def _lengths(prefix: str, batch: str, seq: str, past: str) -> list[onnx.NodeProto]:
    """From the call's sizes (int64 scalars): ``total`` (int32 scalar), ``seqlens`` (each
    row's total minus 1, int32 ``(batch,)``), ``last1`` (the same, ``(1,)``) and ``by_row``
    (whether the call must go row by row), named ``{prefix}/...``."""

    def name(part: str) -> str:
        return f"{prefix}/{part}"

    def constant(part: str, kind: int, value: int, dims: list[int]) -> onnx.NodeProto:
        tensor = helper.make_tensor("", kind, dims, [value])
        return helper.make_node("Constant", [], [name(part)], value=tensor)

    return [
        constant("one", TensorProto.INT32, 1, []),
        constant("one64", TensorProto.INT64, 1, []),
        constant("zero64", TensorProto.INT64, 0, []),
        constant("shape1", TensorProto.INT64, 1, [1]),
        helper.make_node("Add", [past, seq], [name("total64")]),
        # The int32 total is summed from int32 sizes, not cast from total64: onnxruntime
        # would fold that Cast into the Add, cannot rename the subgraphs' uses of it, and
        # warns so at every plain session's creation.
        helper.make_node("Cast", [past], [name("past32")], to=TensorProto.INT32),
        helper.make_node("Cast", [seq], [name("seq32")], to=TensorProto.INT32),
        helper.make_node("Add", [name("past32"), name("seq32")], [name("total")]),
        helper.make_node("Sub", [name("total"), name("one")], [name("last")]),
        helper.make_node("Reshape", [name("last"), name("shape1")], [name("last1")]),
        helper.make_node("Reshape", [batch, name("shape1")], [name("batch1")]),
        helper.make_node("Expand", [name("last1"), name("batch1")], [name("seqlens")]),
        helper.make_node("Greater", [seq, name("one64")], [name("chunk")]),
        helper.make_node("Greater", [past, name("zero64")], [name("cached")]),
        helper.make_node("Greater", [batch, name("one64")], [name("rows")]),
        helper.make_node("And", [name("chunk"), name("cached")], [name("chunk_cached")]),
        helper.make_node("And", [name("chunk_cached"), name("rows")], [name("by_row")]),
    ]


Attend = Callable[[tuple[str, str, str, str], str, list[str]], onnx.NodeProto]


def _by_row(
    inputs: tuple[str, str, str, str],
    attention: Attend,
    name: Callable[[str], str],
    last: str,
    elem_type: int,
) -> onnx.GraphProto:
    """A ``Scan`` over the batch, each row through the operator as a batch of one (the mask,
    ``inputs[3]``, is scanned too where there is one)."""
    parts = ("qkv", "key", "value", "bias") if inputs[3] else ("qkv", "key", "value")
    row_inputs = [name(f"row_{value}") for value in parts]
    batched = [name(f"one_{value}") for value in parts]
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
            (batched[0], batched[1], batched[2], batched[3] if inputs[3] else ""),
            last,
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
        "Scan",
        list(inputs[: len(parts)]),
        [name(f"rows_{o}") for o in "ykv"],
        body=body,
        num_scan_inputs=len(parts),
    )
    return helper.make_graph(
        [scan],
        name("by_rows"),
        [],
        [helper.make_tensor_value_info(name(f"rows_{o}"), elem_type, None) for o in "ykv"],
    )
