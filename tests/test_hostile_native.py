"""Files that abort onnx's C++ code (issue 30): an ``Error:`` line and exit 2, never a signal."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hostile import BUILTINS_ONLY, assert_refused, save_gemm_model

from conftest import run_process

COMMANDS = (["inspect"], ["infer"], ["verify"])


def shape_into_slice(input_dims: list[str | int], shape_dims: list[int] | None) -> onnx.ModelProto:
    """``Shape(x)`` feeding a ``Slice``; ``shape_dims`` declares the shape's own value_info."""
    starts = numpy_helper.from_array(np.array([-1], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([2], np.int64), "ends")
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Slice", ["s", "starts", "ends"], ["t"]),
        ],
        "shape_into_slice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_dims)],
        [helper.make_tensor_value_info("t", TensorProto.INT64, [None])],
        [starts, ends],
    )
    if shape_dims is not None:
        graph.value_info.append(helper.make_tensor_value_info("s", TensorProto.INT64, shape_dims))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_the_file_without_the_negative_dim_is_valid(tmp_path) -> None:
    # The regression files below differ from this valid one only where they say.
    onnx.checker.check_model(shape_into_slice(["n", 3], None), full_check=True)


@pytest.mark.parametrize(
    ("input_dims", "shape_dims", "words"),
    [
        pytest.param(["n", -1], None, "declares axis 1 of 'x' as -1", id="input-dim"),
        pytest.param(["n", 3], [-1], "declares axis 0 of 's' as -1", id="value-info-only"),
    ],
)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command[0])
def test_a_negative_declared_dim_is_refused_not_an_abort(
    tmp_path, input_dims, shape_dims, words, command
) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(shape_into_slice(input_dims, shape_dims), path)
    # A process of its own: before issue 30, onnx aborted it (exit 134, SIGABRT).
    result = run_process(*command, str(path), env=BUILTINS_ONLY)
    assert_refused(result, 2, f"{path} is not a valid ONNX model: it", words)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the checker runs in a forked child")
def test_any_abort_in_onnxs_checker_becomes_one_error_line(cli, tmp_path, monkeypatch) -> None:
    path = save_gemm_model(tmp_path / "m.onnx")
    monkeypatch.setattr(onnx.checker, "check_model", lambda *args, **kwargs: os.abort())
    for command in COMMANDS:
        assert_refused(
            cli(*command, str(path)),
            2,
            f"{path} is not a valid ONNX model: onnx {onnx.__version__}'s checker crashed (SIGABRT)",
        )


def test_a_good_file_is_checked_once(cli, tmp_path, monkeypatch) -> None:
    # The child's verdict stands: a file it passed is not checked again in-process.
    path: Path = save_gemm_model(tmp_path / "m.onnx")
    pid = os.getpid()
    in_parent = []
    real = onnx.checker.check_model

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        if os.getpid() == pid:
            in_parent.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", counting)
    result = cli("inspect", str(path))
    assert result.exit_code == 0, result
    assert not in_parent
