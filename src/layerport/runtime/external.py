"""The external-data layout: a model's large initializers in a data file beside it.

protobuf cannot serialize a message past 2 GiB, so a model whose weights exceed
that keeps them outside the ``.onnx`` file, in one data file named after it
(``linear.onnx`` -> ``linear.onnx.data``), as ``onnx.save_model(...,
save_as_external_data=True)`` writes it: every tensor of at least
``MIN_EXTERNAL_BYTES`` at its own offset, the ``.onnx`` naming the file
relative to its own folder. ``modelfile.read_model`` reads such a pair back
through onnx's own loader, inside the model's folder only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

DATA_SUFFIX = ".data"
MIN_EXTERNAL_BYTES = 1024  # onnx's own default size_threshold: smaller tensors stay inline


def data_file_name(model_name: str) -> str:
    """The data file of the model file named ``model_name``: ``model.onnx.data``."""
    return model_name + DATA_SUFFIX


def external_layout(model_bytes: bytes, model_name: str) -> dict[str, bytes]:
    """The files that hold ``model_bytes`` as ``model_name`` with external data, by name.

    The model file comes last: a writer puts its data in place before it.
    """
    model = onnx.load_from_string(model_bytes)
    data_name = data_file_name(model_name)
    with tempfile.TemporaryDirectory(prefix="layerport-external-") as folder:
        onnx.save_model(
            model,
            Path(folder, model_name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=MIN_EXTERNAL_BYTES,
        )
        data = Path(folder, data_name)
        # A model without a tensor that large has no data file: nothing went out.
        files = {data_name: data.read_bytes()} if data.exists() else {}
        files[model_name] = Path(folder, model_name).read_bytes()
    return files
