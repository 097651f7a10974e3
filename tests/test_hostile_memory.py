"""Memory bounded by what a file will make, not by its size (issue 30): refused with exit 2."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from hostile import BUILTINS_ONLY, assert_refused, assert_succeeded
from layerport.runtime.metadata import ExportRecord

from conftest import run_process


def expand_model(rows: int, columns: int) -> onnx.ModelProto:
    """``Expand`` of one float to ``(rows, columns)``: a few bytes that make rows x columns x 4."""
    shape = numpy_helper.from_array(np.array([rows, columns], np.int64), "s")
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "s"], ["y"])],
        "e",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", "b"])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_tiny_model_whose_output_is_a_gigabyte_is_refused(tmp_path) -> None:
    path = tmp_path / "expand.onnx"
    onnx.save(expand_model(16384, 16384), path)
    assert path.stat().st_size < 100
    # A process of its own: before issue 30 it reached 3.1 GiB and exited 0.
    result = run_process("infer", str(path), env={**BUILTINS_ONLY, "LAYERPORT_MAX_MEMORY": "64M"})
    assert_refused(
        result,
        2,
        f"running {path} (its largest tensor, 'y', is 1.0 GiB) needs about 1.0 GiB",
        "over the 64.0 MiB limit; raise it with LAYERPORT_MAX_MEMORY=SIZE",
    )


def test_the_same_model_under_the_limit_runs(cli, tmp_path) -> None:
    path = tmp_path / "expand.onnx"
    onnx.save(expand_model(64, 64), path)
    assert_succeeded(cli("infer", str(path)))


def test_zeros_for_an_optional_input_are_sized_before_they_are_made(cli, tmp_path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [2**32]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    record = ExportRecord(
        layer="rnn",
        qualified_name="layerport:rnn",
        params={},
        plugin="layerport",
        plugin_version="0.1.0",
        dtype="float32",
        dynamic_dims={"n": 2},
        optional_inputs=["h0"],
        opset=17,
        versions={},
    )
    record.write_to(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    # Before issue 30: MemoryError, reported as an internal error.
    assert_refused(
        cli("infer", str(path)),
        2,
        "filling optional input h0 (4294967296,) with zeros needs about 16.0 GiB",
        "LAYERPORT_MAX_MEMORY",
    )


def test_a_weights_zip_that_inflates_past_the_limit_is_refused_unread(tmp_path) -> None:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2, 8), "bias": torch.zeros(2)}, buffer)
    path = tmp_path / "bomb.pt"
    with (
        zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as original,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb,
    ):
        for info in original.infolist():
            if info.filename.endswith("data/0"):
                with bomb.open(info.filename, "w") as member:
                    for _ in range(96):  # 96 MiB of zeros, 96 KiB deflated
                        member.write(bytes(2**20))
            else:
                bomb.writestr(info.filename, original.read(info))
    assert path.stat().st_size < 2**20
    result = run_process(
        "run",
        "linear",
        "--weights",
        str(path),
        env={**BUILTINS_ONLY, "LAYERPORT_MAX_MEMORY": "64M"},
    )
    assert_refused(
        result,
        2,
        f"reading weights file {path} (unpacked from its zip) needs about 96.0 MiB",
        "over the 64.0 MiB limit",
    )
