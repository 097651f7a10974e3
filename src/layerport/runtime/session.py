"""An onnxruntime session on an ONNX file, with layerport's checks around it: no torch.

``load_model`` reads a file through ``modelfile.read_model`` (validated, external
data inlined) and opens a CPU session on its bytes. ``Session.run`` checks the
inputs' names, ranks, sizes and dtypes against the file, so a mistake gives
layerport's error instead of onnxruntime's, and fills omitted optional inputs
(such as an RNN's ``h0``) with zeros. Which inputs are optional is the caller's
to say: a file's layerport metadata lists them, and a fresh export knows them
from its spec.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from layerport.dtypes import element_type_name
from layerport.errors import BadFile, Setting, UserInputError, WorkFailed, one_line
from layerport.runtime import OPTIMIZATION_LEVELS, noise
from layerport.runtime.arrays import ArraySpec, check_arrays, random_inputs
from layerport.runtime.metadata import ExportRecord
from layerport.runtime.modelfile import read_model


@dataclass(frozen=True)
class SessionSettings:
    """onnxruntime session options. ``threads=0`` lets onnxruntime use every core."""

    threads: int = 0
    optimization: str = "all"


class Session:
    """An ONNX model open in an onnxruntime CPU session.

    ``optional_inputs`` names the inputs that may be left out (filled with zeros).
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        name: str,
        settings: SessionSettings | None = None,
        *,
        optional_inputs: Collection[str] = (),
    ) -> None:
        self.name = name
        self.proto = model
        initializers = {tensor.name for tensor in model.graph.initializer}
        self.inputs = [
            array_spec_of(value, optional_inputs)
            for value in model.graph.input
            if value.name not in initializers
        ]
        self.outputs = [array_spec_of(value) for value in model.graph.output]
        self._session = open_session(model.SerializeToString(), name, settings or SessionSettings())

    def check_inputs(
        self, arrays: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Check named arrays against the file's inputs and fill omitted optional ones.

        Returns the complete arrays for ``run_checked``, and notes worth telling
        the user (such as non-finite values).
        """
        return check_arrays(arrays, self.inputs)

    def run(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named arrays and return its outputs by name."""
        complete, _ = self.check_inputs(arrays)
        return self.run_checked(complete)

    def run_checked(self, complete: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on inputs already checked and completed by ``check_inputs``."""
        try:
            results = self._session.run(None, dict(complete))
        except Exception as error:
            raise WorkFailed(f"onnxruntime failed to run {self.name}: {one_line(error)}") from error
        return {
            spec.name: np.asarray(result)
            for spec, result in zip(self.outputs, results, strict=True)
        }

    def bind(self, arrays: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A call that runs the session on ``arrays``, with its feed prepared once.

        For timing: the call does no checking and returns onnxruntime's raw list.
        """
        import onnxruntime

        feed, _ = self.check_inputs(arrays)
        names = [spec.name for spec in self.outputs]
        run_options = onnxruntime.RunOptions()
        session = self._session
        return lambda: session.run(names, feed, run_options)


def load_model(path: Path, settings: SessionSettings | None = None) -> Session:
    """Validate an ONNX file and open it for inference.

    The optional inputs are the ones the file's layerport metadata lists.
    """
    model = read_model(path)
    record = ExportRecord.from_model(model)
    optional = record.optional_inputs if record else []
    return Session(model, str(path), settings, optional_inputs=optional)


def open_session(model_bytes: bytes, name: str, settings: SessionSettings) -> Any:
    import onnxruntime as ort

    if settings.optimization not in OPTIMIZATION_LEVELS:
        raise UserInputError(
            f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {settings.optimization!r}"
        )
    if settings.threads < 0:
        raise UserInputError(f"threads must be 0 (all cores) or more, got {settings.threads}")
    ort.set_default_logger_severity(noise.onnxruntime_log_level())
    options = ort.SessionOptions()
    options.log_severity_level = noise.onnxruntime_log_level()
    options.intra_op_num_threads = settings.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.optimization]
    try:
        # enable_fallback=0: on a load error the Python wrapper would otherwise print
        # to stdout and load the model again. read_config_from_model=0: the model's
        # own metadata must not set session options.
        return ort.InferenceSession(
            model_bytes,
            sess_options=options,
            providers=["CPUExecutionProvider"],
            enable_fallback=0,
            read_config_from_model=0,
        )
    except Exception as error:
        raise BadFile(f"onnxruntime cannot load {name}: {one_line(error)}") from error


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
        raise UserInputError(f"the file has no symbolic dim {unknown[0]!r}")
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
