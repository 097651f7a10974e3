"""Exporting a configured layer to a clean, self-describing, truly dynamic ONNX file.

The exporter is ``torch.onnx.export(dynamo=True)``, the supported one. Around it:

- every declared-dynamic dim is passed as a ``torch.export.Dim`` shared across
  inputs, and the result is checked: torch.onnx silently pins a dim when it sees
  a reason to (a traced size of 1, a data-dependent branch), so a pinned dim is
  an export failure here, not a surprise in production;
- the file is cleaned of the exporter's per-node stack traces (absolute paths,
  user and folder names) and FX dumps, in subgraphs too;
- it is serialized deterministically, with every initializer embedded: one file,
  byte-for-byte the same for the same layer, configuration and versions;
- it records the layer, its configuration, provenance and verification summary
  in ``metadata_props`` (see ``metadata.py``);
- it is verified (``verify.py``) before it is written, so a file that fails
  never replaces a good one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import onnx
import torch

from layerport import __version__, noise
from layerport.build import build_module
from layerport.config import LayerConfig
from layerport.defaults import DEFAULT_OPSET, DEFAULT_TRIALS, SUPPORTED_OPSETS
from layerport.eager import random_inputs
from layerport.errors import ExportFailed, InvalidDim, UserInputError, VerificationFailed, one_line
from layerport.files import atomic_write_bytes
from layerport.metadata import ExportRecord
from layerport.modelfile import iter_graphs
from layerport.runtime import Model, SessionSettings
from layerport.spec import Tolerance
from layerport.verify import VerificationReport, verify_export
from layerport.weights import sha256_file


@dataclass(frozen=True)
class ExportResult:
    """An exported, verified model, in memory until ``write`` puts it on disk."""

    config: LayerConfig
    model_bytes: bytes
    record: ExportRecord
    node_count: int
    report: VerificationReport | None
    export_seconds: float
    verify_seconds: float

    @property
    def size(self) -> int:
        return len(self.model_bytes)

    def write(self, path: Path) -> None:
        atomic_write_bytes(path, self.model_bytes)


def export_layer(
    config: LayerConfig,
    *,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    tolerance: Tolerance | None = None,
    trials: int = DEFAULT_TRIALS,
) -> ExportResult:
    """Export ``config``'s layer to ONNX and, unless told not to, verify it.

    Raises ``VerificationFailed`` (with ``.report`` attached) when the export does
    not compute what eager PyTorch computes.
    """
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
    started = time.perf_counter()
    module = build_module(config)
    model = trace_to_onnx(module, config, opset)
    clean_model(model)
    export_seconds = time.perf_counter() - started

    record = ExportRecord(
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
        weights_sha256=sha256_file(config.weights) if config.weights else None,
        verification={"passed": None, "note": "not verified at export (--no-verify)"},
    )
    report = None
    started = time.perf_counter()
    if verify:
        set_metadata(model, record)
        session = Model(model, f"the export of {config.spec.name}", SessionSettings())
        report = verify_export(
            config, module, session, config.dims, tolerance=tolerance, trials=trials
        )
        if not report.passed:
            raise VerificationFailed(report.failure_message(), report=report)
        record = _with_verification(record, report)
    set_metadata(model, record)
    return ExportResult(
        config=config,
        model_bytes=model.SerializeToString(deterministic=True),
        record=record,
        node_count=count_nodes(model.graph),
        report=report,
        export_seconds=export_seconds,
        verify_seconds=time.perf_counter() - started,
    )


def trace_to_onnx(module: torch.nn.Module, config: LayerConfig, opset: int) -> onnx.ModelProto:
    """Run torch.onnx's dynamo exporter quietly and check that no dynamic dim was pinned."""
    spec = config.spec
    # Optional inputs are traced with real values too, so they become graph inputs.
    examples = random_inputs(config, include_optional=True)
    arguments = tuple(torch.from_numpy(examples[tensor.name]) for tensor in spec.inputs)
    shared_dims = {dim.name: torch.export.Dim(dim.name) for dim in spec.dims}
    dynamic_shapes = tuple(
        {axis: shared_dims[name] for axis, name in spec.dynamic_axes(tensor).items()} or None
        for tensor in spec.inputs
    )
    with noise.captured_chatter() as chatter, torch.no_grad():
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
                optimize=True,
                verbose=noise.is_verbose(),
                report=False,
            )
            if program is None:
                raise ExportFailed(f"torch.onnx returned no program for layer {spec.name}")
            model = program.model_proto
        except Exception as error:
            said = chatter.getvalue().strip().splitlines()
            hint = f" (torch.onnx said: {said[-1]})" if said else ""
            raise ExportFailed(
                f"torch.onnx could not export layer {spec.name}: {one_line(error)}{hint}"
            ) from error
    _check_and_name_dynamic_dims(model, config)
    return model


def _check_and_name_dynamic_dims(model: onnx.ModelProto, config: LayerConfig) -> None:
    """Refuse pinned dynamic dims, and give symbolic dims the layer's own names."""
    spec = config.spec
    renames: dict[str, str] = {}
    values = {value.name: value for value in [*model.graph.input, *model.graph.output]}
    for tensor in spec.inputs + spec.outputs:
        if tensor.name not in values:
            raise ExportFailed(
                f"the exported graph has no {tensor.name!r}; torch.onnx renamed or dropped it"
            )
        shape = values[tensor.name].type.tensor_type.shape.dim
        for axis, name in spec.dynamic_axes(tensor).items():
            if not shape[axis].HasField("dim_param"):
                raise ExportFailed(
                    f"torch.onnx pinned the dynamic dim {name} of {tensor.name} to "
                    f"{shape[axis].dim_value}; the layer's forward() must not branch on or "
                    "specialize that size"
                )
            renames[shape[axis].dim_param] = name
    for value in _all_value_infos(model.graph):
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param") and dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def clean_model(model: onnx.ModelProto) -> None:
    """Strip stack traces, FX dumps and doc strings: nothing of the build machine remains."""
    model.doc_string = ""
    del model.metadata_props[:]
    for graph in iter_graphs(model.graph):
        graph.doc_string = ""
        del graph.metadata_props[:]
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


def set_metadata(model: onnx.ModelProto, record: ExportRecord) -> None:
    del model.metadata_props[:]
    for key, value in record.to_props().items():
        model.metadata_props.add(key=key, value=value)


def count_nodes(graph: onnx.GraphProto) -> int:
    """Nodes in the graph and in every subgraph (a Scan's body counts)."""
    return sum(len(subgraph.node) for subgraph in iter_graphs(graph))


def _all_value_infos(graph: onnx.GraphProto) -> Iterator[onnx.ValueInfoProto]:
    for subgraph in iter_graphs(graph):
        yield from (*subgraph.input, *subgraph.output, *subgraph.value_info)


def _with_verification(record: ExportRecord, report: VerificationReport) -> ExportRecord:
    return replace(record, verification=report.summary())
