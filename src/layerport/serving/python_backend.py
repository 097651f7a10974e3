"""The model Triton's python backend runs for a ``triton-python`` export: no torch.

The server that pip installs (tritonserver in ``nvidia-pytriton``) has only
the python backend. A ``triton-python`` version folder holds the verified
``model.onnx`` and a ``model.py`` that imports ``TritonPythonModel`` from here,
so the file runs through layerport's own runtime (``runtime.session``): inputs
checked against the file, omitted optional inputs filled with zeros, the
session created in a child process first so that an onnxruntime crash is an
error, not a dead stub.

With dynamic batching, Triton hands ``execute`` several requests at once. Those
whose inputs have the same names and the same shapes after the batch dim run
as one call, concatenated along it; the rest run on their own. Any failure is
that request's error response (``pb_utils.TritonError``), never an exception
out of ``execute``, which would fail every request of the batch.

The python backend's API: https://github.com/triton-inference-server/python_backend
(``triton_python_backend_utils``, which the backend's stub provides at run time).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layerport.errors import LayerportError, UserInputError
from layerport.runtime.session import Session, SessionSettings, load_model

MODEL_FILE = "model.onnx"
# The whole model.py a triton-python version folder holds.
MODEL_PY = '''"""Written by layerport: Triton's python backend runs model.onnx, beside this file,
through layerport's torch-free runtime (layerport.serving.python_backend)."""

from layerport.serving.python_backend import TritonPythonModel  # noqa: F401
'''


def _utils() -> Any:
    # Provided by the backend's stub process; absent anywhere else.
    import triton_python_backend_utils

    return triton_python_backend_utils


class TritonPythonModel:
    """What the python backend calls: ``initialize`` once, ``execute`` per batch of requests."""

    session: Session
    batched: bool

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        folder = Path(args["model_repository"]) / args["model_version"]
        # One thread per instance: Triton runs instance_count instances side by
        # side, and the batch, not the threads, is where serving wins.
        self.session = load_model(folder / MODEL_FILE, SessionSettings(runtime=None, threads=1))
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        utils = _utils()
        responses: list[Any] = [None] * len(requests)
        groups: dict[object, list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:
                arrays = self._arrays(request, utils)
            except Exception as error:  # a malformed request fails alone
                responses[index] = _error(utils, error)
                continue
            key: object = index
            if self.batched:
                key = tuple(
                    (name, array.shape[1:], array.dtype.str) for name, array in arrays.items()
                )
            groups.setdefault(key, []).append((index, arrays))
        for members in groups.values():
            try:
                results = self._run_together([arrays for _, arrays in members])
            except Exception as error:
                for index, _ in members:
                    responses[index] = _error(utils, error)
                continue
            for (index, _), outputs in zip(members, results, strict=True):
                responses[index] = utils.InferenceResponse(
                    output_tensors=[utils.Tensor(name, array) for name, array in outputs.items()]
                )
        return responses

    def _arrays(self, request: Any, utils: Any) -> dict[str, np.ndarray]:
        arrays = {}
        for spec in self.session.inputs:
            tensor = utils.get_input_tensor_by_name(request, spec.name)
            if tensor is not None:
                arrays[spec.name] = tensor.as_numpy()
        return arrays

    def _run_together(self, batch: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run same-shaped requests as one call along the batch dim; each one's outputs."""
        if len(batch) == 1:
            return [self.session.run(batch[0])]
        sizes = [len(next(iter(arrays.values()))) for arrays in batch]
        joined = {name: np.concatenate([arrays[name] for arrays in batch]) for name in batch[0]}
        outputs = self.session.run(joined)
        bounds = np.cumsum(sizes)[:-1]
        split = {name: np.split(array, bounds) for name, array in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(batch))]

    def finalize(self) -> None:
        del self.session


def _error(utils: Any, error: Exception) -> Any:
    """A request's error response: bad input is the client's (HTTP 400), the rest internal (500)."""
    if isinstance(error, LayerportError):
        message = str(error)
    else:
        message = f"{type(error).__name__}: {error}"
    kind = "INVALID_ARG" if isinstance(error, UserInputError) else "INTERNAL"
    try:
        triton_error = utils.TritonError(message, getattr(utils.TritonError, kind))
    except (AttributeError, TypeError):  # python backends before error codes (23.08)
        triton_error = utils.TritonError(message)
    return utils.InferenceResponse(output_tensors=[], error=triton_error)
