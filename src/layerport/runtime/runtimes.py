"""The named runtimes a file can be verified and timed in: the runtime matrix (no torch).

A file that verifies in onnxruntime's default CPU session can still be wrong
where it is deployed: another optimization level, another runtime. Each entry
of ``NAMED_RUNTIMES`` opens a ``Session`` on a model in one such
configuration, so verification and bench run it as one more engine:

- ``ort``: onnxruntime's CPU provider, every graph optimization (the default);
- ``ort-noopt``, ``ort-basic``, ``ort-extended``: the same at a lower level;
- ``onnx-reference``: onnx's ``ReferenceEvaluator`` (numpy, slow);
- ``openvino``: OpenVINO's CPU device (the optional extra ``layerport[openvino]``);
- ``ort-cuda``: onnxruntime's CUDA provider (needs onnxruntime-gpu and a GPU).

A runtime whose package or device is missing says why (``NamedRuntime.missing``)
and how to install it; ``select_runtimes`` skips it under ``all`` and refuses
it when named.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from layerport.errors import UserInputError
from layerport.runtime.external import Model
from layerport.runtime.session import Session, SessionSettings, onnxruntime_module

ALL = "all"


@dataclass(frozen=True)
class NamedRuntime:
    """One runtime configuration of the matrix: what runs the file, and how to get it."""

    name: str
    words: str
    runtime: str = "onnxruntime"
    optimization: str = "all"
    # The module it imports, and the command that installs it, where it is optional.
    module: str | None = None
    install: str | None = None

    def missing(self) -> str | None:
        """Why this runtime cannot run here (with its install command), or ``None``."""
        if self.module is not None and importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not installed (install: {self.install})"
        if self.runtime == "onnxruntime-cuda":
            providers = onnxruntime_module().get_available_providers()
            if "CUDAExecutionProvider" not in providers:
                return (
                    "onnxruntime has no CUDA provider here (it needs onnxruntime-gpu and "
                    f"an NVIDIA GPU; install: {self.install})"
                )
        return None

    def open(
        self,
        model: Model,
        name: str,
        *,
        optional_inputs: Collection[str] = (),
        smallest: Mapping[str, int] | None = None,
        threads: int = 0,
        spinning: bool = True,
    ) -> Session:
        """A session on ``model`` in this runtime; raises as ``Session`` does."""
        settings = SessionSettings(
            threads=threads,
            optimization=self.optimization,
            runtime=self.runtime,
            spinning=spinning,
        )
        return Session(model, name, settings, optional_inputs=optional_inputs, smallest=smallest)


NAMED_RUNTIMES: dict[str, NamedRuntime] = {
    runtime.name: runtime
    for runtime in (
        NamedRuntime("ort", "onnxruntime CPU, all graph optimizations"),
        NamedRuntime(
            "ort-noopt", "onnxruntime CPU, graph optimizations disabled", optimization="disable"
        ),
        NamedRuntime(
            "ort-basic", "onnxruntime CPU, basic graph optimizations", optimization="basic"
        ),
        NamedRuntime(
            "ort-extended", "onnxruntime CPU, extended graph optimizations", optimization="extended"
        ),
        NamedRuntime(
            "onnx-reference", "onnx's ReferenceEvaluator (numpy)", runtime="onnx-reference"
        ),
        NamedRuntime(
            "openvino",
            "OpenVINO CPU, float32 inference precision",
            runtime="openvino",
            module="openvino",
            install="pip install 'layerport[openvino]'",
        ),
        NamedRuntime(
            "ort-cuda",
            "onnxruntime CUDA provider",
            runtime="onnxruntime-cuda",
            install="pip install onnxruntime-gpu, on a machine with an NVIDIA GPU",
        ),
    )
}


def parse_runtimes(text: str) -> list[str]:
    """``ort,ort-noopt`` as a list of names, blanks dropped, repeats kept once."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise UserInputError("give at least one runtime, or all")
    return list(dict.fromkeys(names))


def select_runtimes(names: Sequence[str]) -> tuple[list[NamedRuntime], dict[str, str]]:
    """The runtimes ``names`` ask for that can run here, and the skipped ones with why.

    ``all`` means every runtime in ``NAMED_RUNTIMES``, those missing here
    skipped. Raises ``UserInputError`` for an unknown name, and for a runtime
    named explicitly that cannot run here: asked for by name, its absence is
    the user's to fix, not a pass to report.
    """
    wanted: dict[str, bool] = {}  # name -> named explicitly
    for name in names:
        if name == ALL:
            for known in NAMED_RUNTIMES:
                wanted.setdefault(known, False)
        elif name in NAMED_RUNTIMES:
            wanted[name] = True
        else:
            raise UserInputError(
                f"unknown runtime {name!r}; the runtimes: {', '.join(NAMED_RUNTIMES)}, or {ALL}"
            )
    selected, skipped = [], {}
    for name, explicit in wanted.items():
        runtime = NAMED_RUNTIMES[name]
        why = runtime.missing()
        if why is None:
            selected.append(runtime)
        elif explicit:
            raise UserInputError(f"runtime {name} cannot run here: {why}")
        else:
            skipped[name] = why
    return selected, skipped
