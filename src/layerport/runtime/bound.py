"""A KV cache kept in place: one buffer per cache, bound to the session, written by the attention.

A decoder file as issue 24 defines it takes its cache (``block0_past_key``,
``(batch, kv_heads, past, head_dim)``) and gives back the grown one
(``block0_present_key``, ``past + seq`` long): a plain session copies the
whole cache into a new output at every step. onnxruntime's
``GroupQueryAttention`` can instead write the call's keys and values into the
cache it was given, when its cache input and output are the same memory
("past_present_share_buffer" in onnxruntime's contrib operators' documentation,
``docs/ContribOperators.md``): the buffer is then longer than the tokens it
holds, and the attention reads how many it holds from ``seqlens_k`` and
``total_sequence_length``, not from the buffer's shape.

``bound_model`` derives that variant of a file in memory: the file reads its
past length from its caches' shape, the variant from a ``past_length`` input.
The file on disk stays as it is, so a plain session needs nothing new.
``BoundCache`` keeps the buffers, sized once to the longest decoding, and binds
them as both the cache inputs and the outputs that grow them (onnxruntime's I/O
binding). Only a prefill on an empty cache and then single-token steps run
through it; a chunk of several tokens after a cache, in several rows, takes
another path in layerport's fused files (a ``Scan`` over the rows) that does
not write in place.

Torch-free: onnx, numpy and onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

from layerport.errors import UserInputError
from layerport.runtime.limits import check_allocation
from layerport.runtime.session import Session, onnxruntime_module

PAST_LENGTH = "past_length"
ATTENTION = ("com.microsoft", "GroupQueryAttention")
# GroupQueryAttention's inputs: past_key and past_value, and the additive attention_bias.
CACHE_INPUTS = (3, 4)
ATTENTION_BIAS = 10
# The cache's layout in the operator: (batch, kv_heads, past, head_dim).
PAST_AXIS = 2


def bound_model(
    model: onnx.ModelProto, carried: Collection[str] | None = None
) -> onnx.ModelProto | None:
    """``model`` reading its past length from a ``past_length`` input (scalar int64), or
    ``None`` where its caches cannot be bound buffers.

    They can where every cache input goes to ``GroupQueryAttention`` nodes,
    which take no ``attention_bias`` (a padding mask as wide as the buffer
    would be read as keys), and the graph otherwise reads only the caches'
    dims: the length alone (``Shape`` with start 2, end 3), which becomes
    ``past_length``, or dims without it. ``carried`` names the inputs a decoding
    feeds back (``ExportRecord.streaming``): when given, they must be exactly
    the attention's caches, since ``BoundCache`` binds every one of them as a
    cache (another state, such as a recurrent layer's, has no positions).
    """
    graph = model.graph
    inputs = {value.name for value in graph.input}
    caches: set[str] = set()
    for node in _all_nodes(graph):
        if (node.domain, node.op_type) == ATTENTION:
            if len(node.input) > ATTENTION_BIAS and node.input[ATTENTION_BIAS]:
                return None
            caches.update(node.input[index] for index in CACHE_INPUTS if index < len(node.input))
    # A Scan's body reads rows of the caches under names of its own.
    caches &= inputs
    if not caches or PAST_LENGTH in inputs:
        return None
    if carried is not None and set(carried) != caches:
        return None
    lengths = []
    for node in graph.node:
        if not set(node.input) & caches or _reads_as_attention(node, caches):
            continue
        if node.op_type != "Shape":
            return None
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        start, end = attributes.get("start", 0), attributes.get("end")
        if end is None or start < 0 or end < 0:
            return None
        if (start, end) == (PAST_AXIS, PAST_AXIS + 1):
            lengths.append(node.output[0])
        elif start <= PAST_AXIS < end:
            return None
    if not lengths or not _subgraphs_read_caches_only_in_attention(graph, caches):
        return None
    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    shape = f"{PAST_LENGTH}/shape"
    bound.graph.initializer.append(helper.make_tensor(shape, TensorProto.INT64, [1], [1]))
    bound.graph.input.append(helper.make_tensor_value_info(PAST_LENGTH, TensorProto.INT64, []))
    for node in bound.graph.node:
        if node.op_type == "Shape" and node.output[0] in lengths:
            node.CopyFrom(helper.make_node("Reshape", [PAST_LENGTH, shape], [node.output[0]]))
    return bound


def bound_session(session: Session, carry: tuple[tuple[str, str], ...]) -> Session | None:
    """``session``'s file as ``bound_model``'s variant, open in the same settings (isolated
    as ``session`` was), or ``None`` where its cache cannot be bound or the runtime is not
    onnxruntime; ``carry`` pairs the inputs a decoding feeds back with their outputs."""
    if session.runtime != "onnxruntime":
        return None
    bound = bound_model(session.proto, [given for given, _ in carry])
    if bound is None:
        return None
    name = f"{session.name}, its cache bound"
    return Session(bound, name, session.settings, isolate=session.isolated)


class BoundCache:
    """Decoding through ``bound_model``'s session: the caches stay in buffers ``capacity``
    positions long, which each call grows in place.

    ``carry`` pairs each cache input with the output that grows it (the
    file's ``ExportRecord.streaming``); ``cache`` is the cache to start from,
    as a plain session would be fed it (empty, past 0, before a prefill): the
    buffers take its shape and type, its length replaced by ``capacity``, and
    its positions. Call it with the call's other inputs (ids, or hidden states
    for a block alone): a call on an empty cache may be a prefill, every other
    one is a single token. It returns the outputs that are not the cache;
    ``cache()`` gives the positions held so far, as the plain file would.

    Raises ``UserInputError`` for a ``capacity`` that cannot hold ``cache`` and
    one more token, or a call past it, of no token or of more than one after the
    prefill; ``ResourceLimit`` for buffers past the memory limit;
    ``WorkFailed`` when onnxruntime fails.
    """

    def __init__(
        self,
        session: Session,
        carry: tuple[tuple[str, str], ...],
        cache: Mapping[str, np.ndarray],
        capacity: int,
    ) -> None:
        ort = onnxruntime_module()
        self.session = session
        self.carry = carry
        self.capacity = capacity
        self.length = next(iter(cache.values())).shape[PAST_AXIS]
        if capacity <= self.length:
            raise UserInputError(
                f"a bound cache starting from {self.length} positions needs a capacity of at "
                f"least {self.length + 1} positions, got {capacity}"
            )
        position_bytes = sum(
            array.itemsize * math.prod(array.shape[:PAST_AXIS] + array.shape[PAST_AXIS + 1 :])
            for array in (cache[given] for given, _ in carry)
        )
        check_allocation(capacity * position_bytes, f"a bound cache of {capacity} positions")
        self.buffers = {}
        # Bound once: each call rebinds only its own inputs and the outputs it returns.
        self.binding = session.io_binding()
        for given, made in carry:
            held = cache[given]
            shape = list(held.shape)
            shape[PAST_AXIS] = capacity
            buffer = np.zeros(shape, dtype=held.dtype)
            buffer[:, :, : self.length] = held
            self.buffers[given] = ort.OrtValue.ortvalue_from_numpy(buffer)
            self.binding.bind_ortvalue_input(given, self.buffers[given])
            self.binding.bind_ortvalue_output(made, self.buffers[given])
        grown = {made for _, made in carry}
        self.returned = [spec.name for spec in session.outputs if spec.name not in grown]
        self._ort = ort
        # A single-token step's outputs, bound after the first one: every step has their shapes.
        self._step_outputs: dict[str, tuple[np.ndarray, object]] | None = None

    def __call__(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes = {array.shape[1] for array in feed.values() if array.ndim >= 2}
        seq = max(sizes) if sizes else 1
        if seq < 1:
            raise UserInputError(f"a call takes at least one token, got {seq}")
        if self.length and seq != 1:
            raise UserInputError(
                f"a bound cache takes one token per call after the prefill, got {seq}"
            )
        if self.length + seq > self.capacity:
            raise UserInputError(
                f"the bound cache holds {self.capacity} positions; this call would make "
                f"{self.length + seq}"
            )
        binding = self.binding
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_cpu_input(PAST_LENGTH, np.asarray(self.length, dtype=np.int64))
        if seq == 1 and self._step_outputs is not None:
            self.session.run_bound(binding)
            self.length += seq
            return {name: array.copy() for name, (array, _) in self._step_outputs.items()}
        for name in self.returned:
            binding.bind_output(name)
        self.session.run_bound(binding)
        self.length += seq
        # get_outputs follows the binding's order: the caches bound first, then these.
        results = binding.get_outputs()[-len(self.returned) :]
        outputs = {name: value.numpy() for name, value in zip(self.returned, results, strict=True)}
        if seq == 1:
            # Later steps write into these arrays: no allocation, no wrapping per step.
            self._step_outputs = {}
            for name, array in outputs.items():
                kept = np.empty_like(array)
                value = self._ort.OrtValue.ortvalue_from_numpy(kept)
                binding.bind_ortvalue_output(name, value)
                self._step_outputs[name] = (kept, value)
        return outputs

    def cache(self) -> dict[str, np.ndarray]:
        """The grown cache as the plain file gives it back: each output's first ``length``
        positions, copied."""
        return {
            made: np.take(self.buffers[given].numpy(), range(self.length), axis=PAST_AXIS)
            for given, made in self.carry
        }


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph`` and of its subgraphs (an ``If``'s branches, a ``Scan``'s body)."""
    for node in graph.node:
        yield node
        yield from _inner_nodes(node)


def _inner_nodes(node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``node``'s subgraphs."""
    for attribute in node.attribute:
        for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            yield from _all_nodes(subgraph)


def _reads_as_attention(node: onnx.NodeProto, caches: set[str]) -> bool:
    """Whether ``node`` is the attention and reads the caches only as its cache inputs."""
    read = {index for index, name in enumerate(node.input) if name in caches}
    return (node.domain, node.op_type) == ATTENTION and read <= set(CACHE_INPUTS)


def _subgraphs_read_caches_only_in_attention(graph: onnx.GraphProto, caches: set[str]) -> bool:
    """Whether every subgraph node that reads a cache is the attention (at its cache inputs)
    or a ``Scan`` that hands rows of it to one."""
    for node in graph.node:
        for inner in _inner_nodes(node):
            reads = set(inner.input) & caches and inner.op_type != "Scan"
            if reads and not _reads_as_attention(inner, caches):
                return False
    return True
