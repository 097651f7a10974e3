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

Beside it: ``interface`` (a file's inputs and outputs, and generated inputs),
``failures`` (what crashes onnxruntime, and its errors in one line) and
``reference`` (onnx's reference evaluator as a session).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from layerport.errors import (
    Setting,
    UserInputError,
    WorkFailed,
    one_line,
)
from layerport.runtime import OPTIMIZATION_LEVELS, RUNTIMES, isolation, noise
from layerport.runtime.arrays import check_arrays
from layerport.runtime.external import ExternalModel, Model, proto_of
from layerport.runtime.failures import crashes_nchwc_transformer, creation_error, without_source
from layerport.runtime.footprint import check_run_memory
from layerport.runtime.interface import model_interface
from layerport.runtime.metadata import ExportRecord
from layerport.runtime.modelfile import read_model
from layerport.runtime.reference import ReferenceSession

# onnxruntime's CUDA provider (onnxruntime-gpu), which runtime.runtimes names ort-cuda.
CUDA = "onnxruntime-cuda"
ORT_RUNTIMES = ("onnxruntime", CUDA)


@dataclass(frozen=True)
class SessionSettings:
    """Which runtime runs the file, and onnxruntime's options.

    ``runtime`` is one of ``RUNTIMES``: ``onnxruntime`` (its CPU provider), or
    ``onnx-reference`` (``onnx.reference.ReferenceEvaluator``, which ignores
    ``threads`` and ``optimization``); or, for the runtime matrix
    (``runtime.runtimes``), ``openvino`` or ``onnxruntime-cuda``; ``None`` lets ``load_model`` take the one
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
    ``smallest`` the symbolic dims' smallest valid sizes, where not 1, ``largest``
    their largest, where declared, and
    ``value_ranges`` the integer inputs' valid values, ``(low, high)`` by name.
    ``isolate`` creates the session in a child process first, for files from
    strangers (see ``open_session``), and sizes what each run will make before
    it runs (``runtime.footprint``); layerport's own exports do without.
    """

    def __init__(
        self,
        model: Model,
        name: str,
        settings: SessionSettings | None = None,
        *,
        optional_inputs: Collection[str] = (),
        isolate: bool = False,
        smallest: Mapping[str, int] | None = None,
        value_ranges: Mapping[str, tuple[int, int]] | None = None,
        largest: Mapping[str, int] | None = None,
    ) -> None:
        self.name = name
        self.smallest = dict(smallest or {})
        self.largest = dict(largest or {})
        self.proto = proto_of(model)
        # onnxruntime's contract: tensors handed over outside the model outlive the session.
        self._external_tensors = model.tensors if isinstance(model, ExternalModel) else {}
        self.inputs, self.outputs = model_interface(self.proto, optional_inputs, value_ranges)
        self.settings = settings or SessionSettings()
        self.isolated = isolate
        self._checked_shapes: dict[str, tuple[int, ...]] | None = None
        if isinstance(model, ExternalModel) and self.settings.runtime not in (None, *ORT_RUNTIMES):
            raise WorkFailed(
                f"{self.runtime} cannot run {name}: its weights are past protobuf's 2 GiB, "
                "which only onnxruntime reads from outside the model"
            )
        if self.settings.runtime == "onnx-reference":
            self._session: Any = ReferenceSession(self.proto, name)
        elif self.settings.runtime == "openvino":
            from layerport.runtime.openvino import OpenVinoSession

            self._session = OpenVinoSession(self.proto, name)
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
        complete, notes = check_arrays(arrays, self.inputs, self.smallest, self.largest)
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
                f"{self.runtime} failed to run {self.name}: {one_line(without_source(str(error)))}"
            ) from error
        return {
            spec.name: np.asarray(result)
            for spec, result in zip(self.outputs, results, strict=True)
        }

    def io_binding(self) -> Any:
        """A new onnxruntime ``IOBinding`` on the session, for ``run_bound``: inputs and outputs
        bound to buffers that stay where they are (``runtime.bound``).

        Raises ``WorkFailed`` in another runtime than onnxruntime's.
        """
        if self.runtime not in ORT_RUNTIMES:
            raise WorkFailed(f"{self.runtime} has no I/O binding: only onnxruntime binds buffers")
        return self._session.io_binding()

    def run_bound(self, binding: Any) -> None:
        """Run on what ``binding`` (from ``io_binding``) holds, unchecked, like ``run_checked``.

        Raises ``WorkFailed`` when the runtime fails.
        """
        try:
            self._session.run_with_iobinding(binding, run_options())
        except Exception as error:
            raise WorkFailed(
                f"{self.runtime} failed to run {self.name}: {one_line(without_source(str(error)))}"
            ) from error

    def bind(self, arrays: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        """A call that runs the session on ``arrays``, with its feed prepared once.

        For timing: the call does no checking and returns onnxruntime's raw list.
        """
        feed, _ = self.check_inputs(arrays)
        names = [spec.name for spec in self.outputs]
        options = run_options()
        session = self._session
        return lambda: session.run(names, feed, options)


def load_model(path: Path | str, settings: SessionSettings | None = None) -> Session:
    """Validate an ONNX file and open it for inference, the session isolated.

    The optional inputs are the ones the file's layerport metadata lists, and
    with ``settings.runtime`` ``None`` the runtime is the one that verified it.
    """
    path = Path(path)
    model = read_model(path)
    record = ExportRecord.from_model(proto_of(model))
    settings = settings or SessionSettings()
    if settings.runtime is None:
        engines = (record.verification.get("engines") or [None]) if record else [None]
        recorded = engines[0] if engines[0] in RUNTIMES else "onnxruntime"
        settings = dataclasses.replace(settings, runtime=recorded)
    optional = record.optional_inputs if record else []
    smallest = record.min_dims if record else None
    ranges = record.input_ranges if record and record.input_ranges else {}
    return Session(
        model,
        str(path),
        settings,
        optional_inputs=optional,
        isolate=True,
        smallest=smallest,
        value_ranges={name: (low, high) for name, (low, high) in ranges.items()},
        largest=record.max_dims if record else None,
    )


def open_session(
    model: Model, name: str, settings: SessionSettings, *, isolate: bool = False
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
    if settings.runtime not in (*RUNTIMES, CUDA, None):
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
    # More threads than cores, spinning, take the CPU from the ones at work: 500 on one core
    # ran 2 decoding calls in over a minute, and in milliseconds waiting instead.
    if not settings.spinning or settings.threads > usable_cores():
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[settings.optimization]
    proto = proto_of(model)
    if isinstance(model, ExternalModel):
        _add_external_tensors(options, model, ort)
    model_bytes = proto.SerializeToString()
    providers = ["CPUExecutionProvider"]
    if settings.runtime == CUDA:
        providers.insert(0, "CUDAExecutionProvider")
    disabled = ["NchwcTransformer"] if crashes_nchwc_transformer(proto) else None

    def create() -> Any:
        # enable_fallback=0: on a load error the Python wrapper would otherwise print
        # to stdout and load the model again. read_config_from_model=0: the model's
        # own metadata must not set session options.
        return ort.InferenceSession(
            model_bytes,
            sess_options=options,
            providers=providers,
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
        raise creation_error(error, proto, name, ort.__version__) from error


def _add_external_tensors(options: Any, model: ExternalModel, ort: Any) -> None:
    """Hand onnxruntime the tensors held outside ``model``'s proto, as they are in memory.

    onnxruntime copies them into the session, and would pack each weight of a
    ``Gemm`` or ``MatMul`` into yet another copy: prepacking is off, which keeps
    a 2.16 GB weight's session at one copy (runs are about 2x slower).
    """
    types = {tensor.name: tensor.data_type for tensor in model.proto.graph.initializer}
    names = list(model.tensors)
    values = [
        ort.OrtValue.ortvalue_from_numpy_with_onnx_type(model.tensors[name], types[name])
        for name in names
    ]
    options.add_external_initializers(names, values)
    options.add_session_config_entry("session.disable_prepacking", "1")


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


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
    # Its default, said outright: onnxruntime's Python run() looks this entry up on every
    # call and, when it is missing, raises and catches a C++ exception, which took 40-50 us,
    # 8% of a decode step (onnxruntime 1.32, ``_graph_annotation_id``).
    options.add_run_config_entry("gpu_graph_id", "0")
    return options
