"""``torch.onnx`` to a clean, truly dynamic ``ModelProto``.

The exporter is ``torch.onnx.export(dynamo=True)``, the supported one. Around it:

- every declared-dynamic dim is passed as a ``torch.export.Dim`` shared across
  inputs, and the result is checked: torch.onnx silently pins a dim when it sees
  a reason to (a traced size of 1, a data-dependent branch), so a pinned dim is
  an export failure here, not a surprise in production;
- symbolic dims are renamed to the layer's own dim names;
- the model is cleaned of the exporter's per-node stack traces (absolute paths,
  user and folder names) and FX dumps, in subgraphs too;
- initializers of the same dtype, shape and content are written once: a head
  tied to its embedding holds one table.

Verification and the file's metadata are ``layerport.pipeline``'s business.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Iterator, Mapping

import numpy as np
import onnx
import onnx_ir as ir
import torch

from layerport.config import LayerConfig
from layerport.eager.build import to_torch
from layerport.errors import ExportFailed, InvalidDim, UserInputError, one_line
from layerport.export import SUPPORTED_OPSETS
from layerport.runtime import external, noise
from layerport.runtime.external import ExternalModel, Model, proto_of
from layerport.runtime.modelfile import iter_graphs
from layerport.spec.expressions import substituted
from layerport.spec.forms import ExportForm, exporting_form


def export_onnx(
    module: torch.nn.Module, config: LayerConfig, opset: int, *, form: ExportForm | None = None
) -> onnx.ModelProto:
    """Export ``module``, built for ``config``, to a checked and cleaned ``ModelProto``.

    The model is traced at ``config.dims``, in ``form`` if given (``spec.forms``).
    Raises ``ExportFailed`` when torch.onnx fails or pins a declared-dynamic dim.
    """
    model = export_model(module, config, opset, keep_outside=False, form=form)
    assert isinstance(model, onnx.ModelProto)
    return model


def export_model(
    module: torch.nn.Module,
    config: LayerConfig,
    opset: int,
    *,
    keep_outside: bool = True,
    form: ExportForm | None = None,
) -> Model:
    """``export_onnx``, but weights past ``external.INLINE_LIMIT`` stay outside the proto.

    Such a model comes back as an ``ExternalModel`` whose arrays share the
    module's memory: no copy of the weights is made, and no proto holds them.
    With ``form``, the module is traced in that export form (``spec.forms``).
    """
    check_exportable(config, opset)
    model = trace_to_onnx(module, config, opset, keep_outside=keep_outside, form=form)
    clean_model(proto_of(model))
    return model


def check_exportable(config: LayerConfig, opset: int) -> None:
    """Refuse, before anything is built, an opset or traced sizes the exporter cannot use."""
    if opset not in SUPPORTED_OPSETS:
        raise UserInputError(
            f"opset must be from {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}, got {opset}"
        )
    for name, size in config.dims.items():
        if size < 2:
            # torch.export specializes a size-1 dim to a constant: it would be pinned.
            raise InvalidDim(
                f"dim {name}={size}: exports trace at size 2 or more (the file still runs at size 1)"
            )


def trace_to_onnx(
    module: torch.nn.Module,
    config: LayerConfig,
    opset: int,
    *,
    keep_outside: bool = False,
    form: ExportForm | None = None,
) -> Model:
    """Run torch.onnx's dynamo exporter quietly and check that no dynamic dim was pinned.

    With ``keep_outside``, weights past ``external.INLINE_LIMIT`` are taken out
    of the exported graph before it becomes a proto (see ``export_model``).
    With ``form``, ``export_form()`` names it while the module is traced, its
    translations write the custom ops, and its ``finish`` rewrites the proto.
    """
    spec = config.spec
    # Optional inputs are traced with real values too, so they become graph inputs.
    examples = config.random_inputs(include_optional=True)
    arguments = tuple(to_torch(examples[tensor.name]) for tensor in spec.inputs)
    shared_dims = {}
    for dim in spec.dims:
        # A dim with a smallest size says so, or torch.export refuses the sizes below it.
        smallest = dim.smallest(config.params)
        shared_dims[dim.name] = (
            torch.export.Dim(dim.name, min=smallest) if smallest > 1 else torch.export.Dim(dim.name)
        )
    dynamic_shapes: tuple[object, ...] = tuple(
        {axis: shared_dims[name] for axis, name in spec.dynamic_axes(tensor).items()} or None
        for tensor in spec.inputs
    )
    if _takes_varargs(module):
        # torch.export matches dynamic shapes to forward's signature: a composed
        # model's forward(*inputs) (layerport.model.module) takes them as one tuple.
        dynamic_shapes = (dynamic_shapes,)
    translations = dict(form.translations()) if form is not None else None
    with (
        noise.captured_chatter() as chatter,
        torch.no_grad(),
        _fresh_rnn_dispatch(),
        exporting_form(form.name if form is not None else None),
    ):
        try:
            program = torch.onnx.export(
                module,
                arguments,
                None,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=[tensor.name for tensor in spec.inputs],
                output_names=[tensor.name for tensor in spec.outputs],
                opset_version=opset,
                custom_translation_table=translations,
                optimize=True,
                verbose=noise.is_verbose(),
                report=False,
            )
            if program is None:
                raise ExportFailed(f"torch.onnx returned no program for layer {spec.name}")
            # One copy of a table used twice: a language model's head that shares its
            # embedding's (tie_word_embeddings) would otherwise be written, and loaded, twice.
            _share_equal_initializers(program.model.graph)
            outside = _take_large_tensors(program.model.graph) if keep_outside else {}
            proto = program.model_proto
            if form is not None and form.finish is not None:
                form.finish(proto)
        except Exception as error:
            said = chatter.getvalue().strip().splitlines()
            hint = f" (torch.onnx said: {said[-1]})" if said else ""
            raise ExportFailed(
                f"torch.onnx could not export layer {spec.name}: {one_line(error)}{hint}"
            ) from error
    _check_and_name_dynamic_dims(proto, config)
    return ExternalModel(proto, outside) if outside else proto


def _share_equal_initializers(graph: ir.Graph) -> None:
    """Point every use of an initializer at the first one of its dtype, shape and content.

    onnx_ir's ``DeduplicateHashedInitializersPass`` does this, but hashes each
    tensor's array as it is, and torch.onnx hands over non-contiguous views.
    Only tensors that share a dtype and shape with another are hashed.
    """
    alike: dict[tuple[ir.DataType, tuple[int, ...]], list[ir.Value]] = {}
    for value in graph.initializers.values():
        tensor = value.const_value
        if tensor is not None and not value.is_graph_input() and not value.is_graph_output():
            alike.setdefault((tensor.dtype, tuple(tensor.shape.numpy())), []).append(value)
    for values in alike.values():
        kept: dict[bytes, ir.Value] = {}
        for value in values if len(values) > 1 else ():
            assert value.const_value is not None
            array = np.ascontiguousarray(value.const_value.numpy())
            digest = hashlib.sha256(array.view(np.uint8).data).digest()
            first = kept.setdefault(digest, value)
            if first is not value:
                value.replace_all_uses_with(first)
                assert value.name is not None
                graph.initializers.pop(value.name)


def _take_large_tensors(graph: ir.Graph) -> dict[str, np.ndarray]:
    """The data of ``graph``'s large initializers, taken out of it, when it will not fit a proto.

    torch.onnx's initializers wrap the module's own tensors: their arrays share
    its memory, and each initializer is left as an external reference, so the
    proto made from the graph holds no weights (protobuf cannot hold 2 GiB, and
    making the proto would copy every weight twice over).
    """
    tensors = {
        name: value.const_value
        for name, value in graph.initializers.items()
        if value.const_value is not None
    }
    if sum(tensor.nbytes for tensor in tensors.values()) <= external.INLINE_LIMIT:
        return {}
    taken: dict[str, np.ndarray] = {}
    for name, tensor in tensors.items():
        if tensor.nbytes < external.MIN_EXTERNAL_BYTES:
            continue
        array = np.ascontiguousarray(tensor.numpy())
        if tensor.dtype == ir.DataType.BFLOAT16:
            array = array.view(np.uint16)
        taken[name] = array
        graph.initializers[name].const_value = ir.ExternalTensor(
            external.IN_MEMORY,
            offset=0,
            length=tensor.nbytes,
            dtype=tensor.dtype,
            shape=ir.Shape(array.shape),
            name=name,
        )
    return taken


def _takes_varargs(module: torch.nn.Module) -> bool:
    parameters = list(inspect.signature(module.forward).parameters.values())
    return len(parameters) == 1 and parameters[0].kind is inspect.Parameter.VAR_POSITIONAL


@contextlib.contextmanager
def _fresh_rnn_dispatch() -> Iterator[None]:
    """Clear the dispatch caches of ``aten.lstm`` and ``aten.gru`` around an export.

    torch 2.13's torch.onnx registers a while_loop decomposition for them (so a
    dynamic sequence length survives) by writing the ops' ``py_kernels`` directly,
    which skips ``OpOverload._dispatch_cache``. The second export in a process
    then reuses the first one's cached kernel and pins ``seq``, and an eager
    ``nn.LSTM`` after an export may run the decomposition. Clearing the caches on
    the way in and out gives every export, and every eager call, a fresh lookup.
    """
    ops = (torch.ops.aten.lstm.input, torch.ops.aten.gru.input)
    for op in ops:
        op._dispatch_cache.clear()
    try:
        yield
    finally:
        for op in ops:
            op._dispatch_cache.clear()


def _check_and_name_dynamic_dims(model: onnx.ModelProto, config: LayerConfig) -> None:
    """Refuse pinned dynamic input dims, and give symbolic dims the layer's own names.

    An *input* dim torch.onnx pinned means the graph was specialized to the
    traced size (a loop unrolled, a branch taken): that is an export failure.
    An *output* dim pinned while every input dim stayed symbolic is the
    exporter's shape inference stopping short (the ONNX ``LSTM`` op's ``Y`` is
    declared ``[batch, 10, ...]`` though it is computed for any length), so it is
    declared symbolic again. The verification grid, at sizes other than the
    traced one, is what proves such an output right.
    """
    spec = config.spec
    renames: dict[str, str] = {}
    values = {value.name: value for value in [*model.graph.input, *model.graph.output]}
    for tensor in spec.inputs + spec.outputs:
        if tensor.name not in values:
            raise ExportFailed(
                f"the exported graph has no {tensor.name!r}; torch.onnx renamed or dropped it"
            )
        is_input = tensor in spec.inputs
        shape = values[tensor.name].type.tensor_type.shape.dim
        for axis, name in spec.dynamic_axes(tensor).items():
            if shape[axis].HasField("dim_param"):
                renames[shape[axis].dim_param] = name
            elif is_input:
                raise ExportFailed(
                    f"torch.onnx pinned the dynamic dim {name} of {tensor.name} to "
                    f"{shape[axis].dim_value}; the layer's forward() must not branch on or "
                    f"specialize that size{_unrolled_hint(config, name, shape[axis].dim_value)}"
                )
            else:
                shape[axis].dim_param = name
        for axis, formula in spec.derived_axes(tensor).items():
            # A derived output dim is named by its formula, with the parameters'
            # values in it: "(length + 2 * 0 - 1 * (3 - 1) - 1) // 1 + 1".
            shape[axis].dim_param = substituted(formula, _numeric(config.params))
    for value in _all_value_infos(model.graph):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def _unrolled_hint(config: LayerConfig, dim: str, pinned: int) -> str:
    """Where a dim is pinned to its traced size, the likely cause: a Python loop over it.

    torch.onnx unrolls ``for t in range(x.shape[1])`` into one copy of the body
    per traced step, which pins the dim; the recurrence helper exports as one Scan.
    """
    if pinned != config.dims.get(dim):
        return ""
    return (
        f"; a Python loop over {dim} in forward() is unrolled at the traced size: "
        "loop with layerport.eager.recurrence.run_over_time, which exports as one Scan"
    )


def _numeric(params: Mapping[str, object]) -> dict[str, int | bool]:
    return {name: value for name, value in params.items() if isinstance(value, (int, bool))}


def clean_model(model: onnx.ModelProto) -> None:
    """Strip stack traces, FX dumps and doc strings: nothing of the build machine remains.

    Intermediate shapes (``value_info``) go too: they are optional, onnxruntime
    infers its own, and the exporter's were inferred at the traced sizes, where
    a recurrence's can be pinned. A stacked ``Scan`` export halves in size.
    """
    model.doc_string = ""
    del model.metadata_props[:]
    for graph in iter_graphs(model.graph):
        graph.doc_string = ""
        del graph.metadata_props[:]
        del graph.value_info[:]
        for item in [
            *graph.node,
            *graph.input,
            *graph.output,
            *graph.value_info,
            *graph.initializer,
        ]:
            item.doc_string = ""
            del item.metadata_props[:]
    for function in model.functions:
        function.doc_string = ""
        del function.metadata_props[:]
        for node in function.node:
            node.doc_string = ""
            del node.metadata_props[:]


def count_nodes(graph: onnx.GraphProto) -> int:
    """Nodes in the graph and in every subgraph (a Scan's body counts)."""
    return sum(len(subgraph.node) for subgraph in iter_graphs(graph))


def _all_value_infos(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    for subgraph in iter_graphs(graph):
        yield from (*subgraph.input, *subgraph.output, *subgraph.value_info)
