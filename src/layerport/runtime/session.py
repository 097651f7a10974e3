"""An onnxruntime session on an ONNX file, with layerport's checks around it: no torch.

``load_model`` reads a file through ``modelfile.read_model`` (validated, external
data inlined) and opens a CPU session on its bytes, created first in a child
process (``isolation``) so that an onnxruntime crash becomes an error, not a
signal. A graph known to crash onnxruntime 1.32 is opened without the optimizer
that crashes on it (``crashes_nchwc_transformer``). onnxruntime logs nothing
unless verbose: what it would log as an error it also raises, and layerport
reports that in one line. ``Session.run`` checks the
inputs' names, ranks, sizes and dtypes against the file, so a mistake gives
layerport's error instead of onnxruntime's, and fills omitted optional inputs
(such as an RNN's ``h0``) with zeros. Which inputs are optional is the caller's
to say: a file's layerport metadata lists them, and a fresh export knows them
from its spec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import sys
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from layerport.dtypes import element_type_name
from layerport.errors import (
    BadFile,
    LayerportError,
    Setting,
    UserInputError,
    WorkFailed,
    one_line,
)
from layerport.runtime import OPTIMIZATION_LEVELS, RUNTIMES, isolation, noise
from layerport.runtime.arrays import ArraySpec, check_arrays, random_inputs
from layerport.runtime.footprint import check_run_memory
from layerport.runtime.metadata import ExportRecord
from layerport.runtime.modelfile import iter_graphs, read_model


@dataclass(frozen=True)
class SessionSettings:
    """Which runtime runs the file, and onnxruntime's options.

    ``runtime`` is one of ``RUNTIMES``: ``onnxruntime`` (its CPU provider), or
    ``onnx-reference`` (``onnx.reference.ReferenceEvaluator``, which ignores
    ``threads`` and ``optimization``); ``None`` lets ``load_model`` take the one
    that verified the file, as its layerport metadata records (a bfloat16
    file's is the reference). ``threads=0`` lets onnxruntime use every core.
    """

    threads: int = 0
    optimization: str = "all"
    runtime: str | None = "onnxruntime"
    # Whether idle worker threads spin for more work. Two sessions timed in turns
    # must not: one's spinning threads take the CPU from the other (bench
    # measured an int8 file identical to its float32 one as 1.45x slower).
    spinning: bool = True


class Session:
    """An ONNX model open in an onnxruntime CPU session, or in onnx's reference evaluator.

    ``optional_inputs`` names the inputs that may be left out (filled with zeros),
    ``smallest`` the symbolic dims' smallest valid sizes, where above 1.
    ``isolate`` creates the session in a child process first, for files from
    strangers (see ``open_session``), and sizes what each run will make before
    it runs (``runtime.footprint``); layerport's own exports do without.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        name: str,
        settings: SessionSettings | None = None,
        *,
        optional_inputs: Collection[str] = (),
        isolate: bool = False,
        smallest: Mapping[str, int] | None = None,
    ) -> None:
        self.name = name
        self.smallest = dict(smallest or {})
        self.proto = model
        self.inputs, self.outputs = model_interface(model, optional_inputs)
        self.settings = settings or SessionSettings()
        self.isolated = isolate
        self._checked_shapes: dict[str, tuple[int, ...]] | None = None
        if self.settings.runtime == "onnx-reference":
            self._session: Any = ReferenceSession(model, name)
        else:
            self._session = open_session(model, name, self.settings, isolate=isolate)

    @property
    def runtime(self) -> str:
        """The runtime that runs the file: ``onnxruntime`` or ``onnx-reference``."""
        return self.settings.runtime or "onnxruntime"

    def check_inputs(
        self, arrays: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Check named arrays against the file's inputs and fill omitted optional ones.

        Returns the complete arrays for ``run_checked``, and notes worth telling
        the user (such as non-finite values).
        """
        complete, notes = check_arrays(arrays, self.inputs, self.smallest)
        if self.isolated:
            # A stranger's file may make far more than its inputs: check what it will make.
            shapes = {name: tuple(array.shape) for name, array in complete.items()}
            if shapes != self._checked_shapes:
                check_run_memory(self.proto, shapes, self.name)
                self._checked_shapes = shapes
        return complete, notes

    def run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named arrays and return its outputs by name."""
        complete, _ = self.check_inputs(arrays)
        return self.run_checked(complete)

    def run_checked(self, complete: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on inputs already checked and completed by ``check_inputs``."""
        try:
            results = self._session.run(None, dict(complete), run_options())
        except Exception as error:
            raise WorkFailed(
                f"{self.runtime} failed to run {self.name}: {one_line(_without_source(str(error)))}"
            ) from error
        return {
            spec.name: np.asarray(result)
            for spec, result in zip(self.outputs, results, strict=True)
        }

    def bind(self, arrays: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A call that runs the session on ``arrays``, with its feed prepared once.

        For timing: the call does no checking and returns onnxruntime's raw list.
        """
        feed, _ = self.check_inputs(arrays)
        names = [spec.name for spec in self.outputs]
        options = run_options()
        session = self._session
        return lambda: session.run(names, feed, options)


# onnxruntime's messages carry the C++ file, line and function that raised, which
# would fill the one error line before the reason: "/onnxruntime_src/.../x.h:91
# onnxruntime::ReshapeHelper::ReshapeHelper(...) size == size was false. The ...".
_SOURCE_LOCATION = re.compile(r"\S*onnxruntime_src/\S+:\d+ (?:onnxruntime::)?\S*?\(.*?\) ")
_ONNXRUNTIME_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _without_source(message: str) -> str:
    """onnxruntime's message without its error-code prefix and C++ source locations."""
    return _SOURCE_LOCATION.sub("", _ONNXRUNTIME_PREFIX.sub("", message))


def load_model(path: Path, settings: SessionSettings | None = None) -> Session:
    """Validate an ONNX file and open it for inference, the session isolated.

    The optional inputs are the ones the file's layerport metadata lists, and
    with ``settings.runtime`` ``None`` the runtime is the one that verified it.
    """
    model = read_model(path)
    record = ExportRecord.from_model(model)
    settings = settings or SessionSettings()
    if settings.runtime is None:
        engines = (record.verification.get("engines") or [None]) if record else [None]
        recorded = engines[0] if engines[0] in RUNTIMES else "onnxruntime"
        settings = dataclasses.replace(settings, runtime=recorded)
    optional = record.optional_inputs if record else []
    smallest = record.min_dims if record else None
    return Session(
        model, str(path), settings, optional_inputs=optional, isolate=True, smallest=smallest
    )


def open_session(
    model: onnx.ModelProto, name: str, settings: SessionSettings, *, isolate: bool = False
) -> Any:
    """An onnxruntime CPU session on ``model``; ``name`` names it in errors.

    With ``isolate``, the session is first created in a forked child, with the
    same options: if onnxruntime crashes there, this raises ``WorkFailed`` and
    the process lives on. That costs a fork and one more session creation: for
    ``infer`` of the float32 rnn, 22 to 36 ms on 670 ms (issue 10's figures).
    Without fork there is no isolation.

    Raises ``WorkFailed`` when onnxruntime crashes or has no kernel for one of
    the model's ops in its types, ``BadFile`` when it refuses the model otherwise.
    """
    ort = onnxruntime_module()
    if settings.runtime not in (*RUNTIMES, None):
        raise UserInputError(
            f"runtime must be one of {', '.join(RUNTIMES)}, got {settings.runtime!r}"
        )
    if settings.optimization not in OPTIMIZATION_LEVELS:
        raise UserInputError(
            f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {settings.optimization!r}"
        )
    if settings.threads < 0:
        raise UserInputError(f"threads must be 0 (all cores) or more, got {settings.threads}")
    options = ort.SessionOptions()
    options.log_severity_level = noise.onnxruntime_log_level()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    if not settings.spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.optimization]
    model_bytes = model.SerializeToString()
    disabled = ["NchwcTransformer"] if crashes_nchwc_transformer(model) else None

    def create() -> Any:
        # enable_fallback=0: on a load error the Python wrapper would otherwise print
        # to stdout and load the model again. read_config_from_model=0: the model's
        # own metadata must not set session options.
        return ort.InferenceSession(
            model_bytes,
            sess_options=options,
            providers=["CPUExecutionProvider"],
            enable_fallback=0,
            read_config_from_model=0,
            disabled_optimizers=disabled,
        )

    if isolate:
        crash = isolation.crash_in_child(create)
        if crash is not None:
            raise WorkFailed(
                f"onnxruntime {ort.__version__} {crash.words()} while creating a session for "
                f"{name}; this is an onnxruntime bug, which a lower graph optimization "
                "level may avoid (",
                Setting("optimization", "extended"),
                ")",
            )
    try:
        return create()
    except Exception as error:
        raise creation_error(error, model, name, ort.__version__) from error


class ReferenceSession:
    """``onnx.reference.ReferenceEvaluator`` behind the slice of onnxruntime's API we use.

    The evaluator is onnx's own implementation of every operator in numpy: slow
    (7x to 20x onnxruntime on the rnn), but independent of onnxruntime, and it
    runs the precisions onnxruntime's CPU provider has no kernels for (bfloat16).
    It is pure Python, so it needs no crash isolation.
    """

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        from onnx.reference import ReferenceEvaluator

        self.outputs = [value.name for value in model.graph.output]
        try:
            self._evaluator = ReferenceEvaluator(model)
        except Exception as error:
            raise BadFile(
                f"onnx's reference evaluator cannot load {name}: {one_line(str(error))}"
            ) from error

    def run(
        self, names: list[str] | None, feed: Mapping[str, np.ndarray], options: Any = None
    ) -> list[Any]:
        results = self._evaluator.run(names, dict(feed))
        return list(results)


def onnxruntime_module() -> Any:
    """onnxruntime, set to layerport's log level, and imported without a word.

    Importing it creates its logging environment with warnings on, and it may
    warn at once (device discovery on a machine whose DRM card has no PCI
    attributes: microsoft/onnxruntime#26763), so the first import happens with
    file descriptor 2 muted, unless verbose.
    """
    first = "onnxruntime" not in sys.modules
    with noise.native_stderr_muted() if first else contextlib.nullcontext():
        import onnxruntime as ort
    ort.set_default_logger_severity(noise.onnxruntime_log_level())
    return ort


def run_options() -> Any:
    """onnxruntime ``RunOptions`` at layerport's log level, for every run.

    A run's log level is its own, not the session's: without it a failing node
    logs a coloured ``[E:onnxruntime:...]`` line before the exception is raised.
    """
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = noise.onnxruntime_log_level()
    return options


# ---------------------------------------------------------------------------
# Known onnxruntime failures


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
        return BadFile(f"onnxruntime cannot load {name}: {one_line(error)}")
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


def model_interface(
    model: onnx.ModelProto, optional_inputs: Collection[str] = ()
) -> tuple[list[ArraySpec], list[ArraySpec]]:
    """The model's inputs and outputs, in the graph's order.

    Graph inputs that an initializer also defines (constants, in opsets before 9
    style) are not inputs a caller feeds, so they are left out.
    """
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [
        array_spec_of(value, optional_inputs)
        for value in model.graph.input
        if value.name not in initializers
    ]
    return inputs, [array_spec_of(value) for value in model.graph.output]


def array_spec_of(value: onnx.ValueInfoProto, optional: Collection[str] = ()) -> ArraySpec:
    """A graph input's or output's name, dims (symbolic names or sizes) and dtype."""
    tensor_type = value.type.tensor_type
    dims: list[str | int] = []
    for axis, dim in enumerate(tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param or f"{value.name}_axis{axis}")
    return ArraySpec(
        name=value.name,
        dims=tuple(dims),
        dtype=element_type_name(tensor_type.elem_type),
        optional=value.name in optional,
    )


def generated_inputs(
    session: Session, dims: Mapping[str, int], seed: int | None
) -> dict[str, np.ndarray]:
    """Inputs drawn as ``layerport run`` draws them: standard normal, from the seed.

    Symbolic dims take their size from ``dims``, else from the sizes the file
    records it was traced at. Each input has its own dtype. Optional inputs are
    left out (zeros); a file with no inputs gets none.
    """
    record = ExportRecord.from_model(session.proto)
    sizes = dict(record.dynamic_dims) if record else {}
    unknown = sorted(
        set(dims) - {d for spec in session.inputs for d in spec.dims if isinstance(d, str)}
    )
    if unknown:
        known = sorted({d for spec in session.inputs for d in spec.dims if isinstance(d, str)})
        close = difflib.get_close_matches(unknown[0], known, n=1)
        suggestion = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserInputError(
            f"the file has no symbolic dim {unknown[0]!r}{suggestion}; "
            f"its symbolic dims: {', '.join(known) or '(none)'}"
        )
    sizes.update(dims)
    shapes = {}
    dtypes = {}
    for spec in session.inputs:
        if spec.optional:
            continue
        missing = [dim for dim in spec.dims if isinstance(dim, str) and dim not in sizes]
        if missing:
            raise UserInputError(
                f"give the size of dim {missing[0]} with ",
                Setting("dims", f"{missing[0]}=SIZE"),
                ", or pass ",
                Setting("inputs"),
            )
        shapes[spec.name] = tuple(sizes[dim] if isinstance(dim, str) else dim for dim in spec.dims)
        dtypes[spec.name] = spec.dtype
    default_seed = record.seed if record and record.seed is not None else 0
    return random_inputs(shapes, dtypes, default_seed if seed is None else seed)
