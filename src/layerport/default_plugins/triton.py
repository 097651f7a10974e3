"""The built-in ``triton`` and ``triton-python`` export targets: a Triton model repository.

``export LAYER --target triton -o REPO`` writes ``REPO/NAME/config.pbtxt`` and
``REPO/NAME/VERSION/model.onnx`` for Triton's onnxruntime backend (the NGC
containers have it); ``--target triton-python`` writes the same verified file
with a ``model.py`` for Triton's python backend (``serving.python_backend``),
the only one the tritonserver that pip installs ships. The config is derived
from the spec and the file (``serving.model_config``); versions and atomicity
are ``serving.repository``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from layerport import hookimpl
from layerport.errors import Setting, UserInputError
from layerport.serving.model_config import INSTANCE_KINDS, ServingSettings
from layerport.spec import Param
from layerport.targets import ExportTarget, TargetOptions

if TYPE_CHECKING:
    from layerport.results import ExportResult

OPTIONS = (
    Param("name", str, "", "model name in the repository (default: the layer's name)"),
    Param(
        "max_batch_size",
        int,
        0,
        "largest batch Triton forms; 0 keeps the model's, or "
        f"{ServingSettings.max_batch_size} for a new model",
        minimum=0,
    ),
    Param(
        "preferred_batch_size",
        int,
        ServingSettings.preferred_batch_size,
        "batch size the dynamic batcher aims for",
        minimum=1,
    ),
    Param(
        "max_queue_delay_us",
        int,
        ServingSettings.max_queue_delay_us,
        "how long a request waits for others to batch with, in microseconds",
        minimum=0,
    ),
    Param(
        "instance_kind",
        str,
        ServingSettings.instance_kind,
        "where the model's instances run",
        choices=tuple(INSTANCE_KINDS),
    ),
    Param("instance_count", int, ServingSettings.instance_count, "model instances", minimum=1),
)


def model_folder(output: Path, options: TargetOptions) -> Path:
    """The model's folder: ``output`` (REPO/STEM), renamed by the ``name`` option."""
    from layerport.serving.repository import check_model_name

    name = str(options["name"]) or output.name
    check_model_name(name)
    return output.parent / name


def current_max_batch_size(model_folder: Path) -> int:
    """The existing model's ``max_batch_size`` (its clients may rely on it), or the default."""
    from layerport.serving.repository import read_config

    if (model_folder / "config.pbtxt").is_file():
        current = int(read_config(model_folder).get("max_batch_size", 0))
        if current > 0:
            return current
    return ServingSettings.max_batch_size


def _check(backend: str) -> Callable[[Path, TargetOptions], None]:
    def check(output: Path, options: TargetOptions) -> None:
        from layerport.serving.repository import check_repository

        if backend == "python" and options["instance_kind"] == "gpu":
            raise UserInputError(
                "the triton-python model runs layerport's CPU runtime; instance_kind=gpu needs ",
                Setting("target", "triton"),
                ", whose onnxruntime backend runs on the GPU",
            )
        check_repository(model_folder(output, options), backend)

    return check


def _write(backend: str) -> Callable[[ExportResult, Path, TargetOptions], Path]:
    def write(result: ExportResult, output: Path, options: TargetOptions) -> Path:
        import onnx

        from layerport.runtime.failures import crashes_nchwc_transformer
        from layerport.runtime.interface import model_interface
        from layerport.serving.model_config import model_config
        from layerport.serving.python_backend import MODEL_FILE, MODEL_PY
        from layerport.serving.repository import write_version

        spec = result.config.spec
        dtype = result.config.dtype
        if backend == "python" and dtype == "bfloat16":
            raise UserInputError(
                "Triton's python backend hands tensors over as numpy arrays, and numpy has no "
                "bfloat16: serve float16 or float32"
            )
        if (
            backend == "onnxruntime"
            and spec.precisions.get(dtype) == "onnx-reference"
            and options["instance_kind"] == "cpu"
        ):
            raise UserInputError(
                f"onnxruntime's CPU provider cannot run this {dtype} {spec.name} (it was verified "
                f"in onnx's reference evaluator), so Triton's onnxruntime backend on the CPU "
                f"cannot serve it: serve it with ",
                Setting("target", "triton-python"),
                " (float64), or on a GPU",
            )
        folder = model_folder(output, options)
        model = onnx.load_from_string(result.model_bytes)
        inputs, outputs = model_interface(model)
        settings = ServingSettings(
            max_batch_size=int(options["max_batch_size"]) or current_max_batch_size(folder),
            preferred_batch_size=int(options["preferred_batch_size"]),
            max_queue_delay_us=int(options["max_queue_delay_us"]),
            instance_kind=str(options["instance_kind"]),
            instance_count=int(options["instance_count"]),
        )
        config = model_config(
            folder.name,
            spec,
            inputs,
            outputs,
            result.record,
            backend,
            settings,
            avoid_layout_optimizations=crashes_nchwc_transformer(model),
        )
        files = result.files(MODEL_FILE)
        if backend == "python":
            files["model.py"] = MODEL_PY.encode()
        version = write_version(folder, config, files)
        return version / MODEL_FILE

    return write


def _notes(backend: str) -> Callable[[ExportResult, TargetOptions], list[str]]:
    def notes(result: ExportResult, options: TargetOptions) -> list[str]:
        from layerport.serving.model_config import batching

        spec = result.config.spec
        said = []
        reason = batching(spec).reason
        if reason is not None:
            said.append(f"Triton will not batch {spec.name}: {reason}")
        required = [t.name for t in spec.inputs if t.optional and backend == "onnxruntime"]
        if required:
            said.append(
                f"Triton's onnxruntime backend cannot leave out {', '.join(required)}: the config "
                "requires it (send zeros); the triton-python target fills it in"
            )
        return said

    return notes


def repository_target(name: str, backend: str, description: str) -> ExportTarget:
    """A target that writes a Triton model repository for ``backend``."""
    return ExportTarget(
        name=name,
        description=description,
        output_in=lambda folder, stem: folder / stem,
        check=_check(backend),
        write=_write(backend),
        notes=_notes(backend),
        options=OPTIONS,
        repository=True,
    )


TRITON = repository_target(
    "triton",
    "onnxruntime",
    "A Triton model repository for its onnxruntime backend: "
    "REPO/NAME/config.pbtxt and REPO/NAME/VERSION/model.onnx.",
)
TRITON_PYTHON = repository_target(
    "triton-python",
    "python",
    "A Triton model repository for its python backend (the tritonserver pip installs): "
    "model.onnx run by layerport's torch-free runtime, through a model.py.",
)


@hookimpl
def register_export_targets(register: Callable[[ExportTarget], None]) -> None:
    register(TRITON)
    register(TRITON_PYTHON)
