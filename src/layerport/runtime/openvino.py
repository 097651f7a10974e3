"""OpenVINO's runtime, behind the slice of onnxruntime's session API layerport uses (optional).

OpenVINO is an optional extra (``layerport[openvino]``): nothing imports it
until a session asks for it, and ``runtime.runtimes`` reports it as skipped,
with its install command, where it is missing.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from layerport.errors import BadFile, WorkFailed, one_line


class OpenVinoSession:
    """An ONNX model compiled by OpenVINO for its CPU device, in float32 arithmetic.

    ``INFERENCE_PRECISION_HINT`` is pinned to f32: on CPUs with bfloat16 units
    OpenVINO would otherwise compute a float32 file in bfloat16, which is a
    deployment choice, not the file's meaning. Raises ``BadFile`` when OpenVINO
    cannot read the model, ``WorkFailed`` when it cannot compile it.
    """

    def __init__(self, model: onnx.ModelProto, name: str) -> None:
        import openvino

        core = openvino.Core()
        self.outputs = [value.name for value in model.graph.output]
        # OpenVINO reads ONNX from a path; the model is already validated and inlined.
        with tempfile.TemporaryDirectory(prefix="layerport-openvino-") as folder:
            path = Path(folder) / "model.onnx"
            path.write_bytes(model.SerializeToString())
            try:
                read = core.read_model(str(path))
            except Exception as error:
                raise BadFile(f"OpenVINO cannot read {name}: {one_line(str(error))}") from error
        try:
            self._compiled = core.compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        except Exception as error:
            raise WorkFailed(f"OpenVINO cannot compile {name}: {one_line(str(error))}") from error

    def run(
        self, names: list[str] | None, feed: Mapping[str, np.ndarray], options: Any = None
    ) -> list[Any]:
        results = self._compiled(dict(feed))
        # Copies: OpenVINO's result arrays are views of the request's own buffers.
        return [np.array(results[output]) for output in self._compiled.outputs]
