"""What every refusal in the hostile-input tests must look like."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Subprocess tests load only the built-in plugins, whatever else is installed here.
BUILTINS_ONLY = {"LAYERPORT_LOAD_PLUGINS": ""}


def assert_refused(result: Any, exit_code: int, *words: str) -> None:
    """The exit code, and one last ``Error:`` line naming ``words``; no traceback.

    Lines before it may only be warnings and notes: a plugin installed in this
    environment that fails to load is reported on every command, and a note says
    how the weights were read before they are found wanting.
    """
    assert result.exit_code == exit_code, result
    assert "Traceback" not in result.stderr, result.stderr
    *before, error = result.stderr.splitlines() or [""]
    assert error.startswith("Error: "), result.stderr
    assert result.stderr.endswith("\n"), result.stderr
    assert all(line.startswith(("Warning: ", "Note: ")) for line in before), result.stderr
    for word in words:
        assert word in error, (word, result.stderr)


def assert_succeeded(result: Any) -> None:
    """Exit 0 with no error and no traceback (warnings and notes allowed)."""
    assert result.exit_code == 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert not any(line.startswith("Error") for line in result.stderr.splitlines()), result


def gemm_model() -> onnx.ModelProto:
    """A model layerport did not export: ``y = x @ W.T + B`` with a symbolic batch dim ``n``."""
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "W")
    bias = numpy_helper.from_array(np.ones(3, np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def save_gemm_model(path: Path) -> Path:
    onnx.save(gemm_model(), path)
    return path
