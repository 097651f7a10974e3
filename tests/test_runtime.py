"""The torch-free runtime: generated inputs, input checks and files without inputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hostile import assert_succeeded, gemm_model
from layerport.runtime.interface import generated_inputs
from layerport.runtime.session import Session


def _checked(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def mixed_dtype_model() -> onnx.ModelProto:
    """``y = x + x`` in float32 and ``e = d + d`` in float64, sharing the dim ``n``."""
    return _checked(
        helper.make_graph(
            [
                helper.make_node("Add", ["x", "x"], ["y"]),
                helper.make_node("Add", ["d", "d"], ["e"]),
            ],
            "mixed",
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2]),
                helper.make_tensor_value_info("d", TensorProto.DOUBLE, ["n", 3]),
            ],
            [
                helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2]),
                helper.make_tensor_value_info("e", TensorProto.DOUBLE, ["n", 3]),
            ],
        )
    )


def constant_model() -> onnx.ModelProto:
    """A model with no graph inputs: one Constant node's output."""
    value = numpy_helper.from_array(np.arange(3, dtype=np.float32), "value")
    return _checked(
        helper.make_graph(
            [helper.make_node("Constant", [], ["c"], value=value)],
            "constant",
            [],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [3])],
        )
    )


def test_generated_inputs_take_each_inputs_own_dtype() -> None:
    model = Session(mixed_dtype_model(), "mixed")
    arrays = generated_inputs(model, {"n": 4}, seed=7)
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == (4, 2)
    assert arrays["d"].dtype == np.float64 and arrays["d"].shape == (4, 3)
    outputs = model.run(arrays)
    np.testing.assert_array_equal(outputs["y"], arrays["x"] * 2)
    np.testing.assert_array_equal(outputs["e"], arrays["d"] * 2)
    assert outputs["e"].dtype == np.float64


def test_a_model_without_inputs_gets_none_generated() -> None:
    model = Session(constant_model(), "constant")
    assert generated_inputs(model, {}, seed=None) == {}
    np.testing.assert_array_equal(model.run({})["c"], np.arange(3, dtype=np.float32))


def test_infer_runs_a_model_without_inputs(cli, tmp_path) -> None:
    path = tmp_path / "constant.onnx"
    onnx.save(constant_model(), path)
    result = cli("infer", str(path), "--json")
    assert_succeeded(result)
    assert "c" in json.loads(result.stdout)["outputs"]


def test_check_inputs_completes_and_notes_non_finite_values() -> None:
    model = Session(gemm_model(), "gemm")
    x = np.ones((2, 4), np.float32)
    x[1, 1] = np.nan
    complete, notes = model.check_inputs({"x": x})
    assert list(complete) == ["x"]
    assert notes == ["input x holds NaN or Inf values"]
    assert model.check_inputs({"x": np.ones((2, 4), np.float32)})[1] == []


def spins(session: object) -> bool:
    """Whether an onnxruntime session's idle worker threads spin (its default) or wait."""
    options = session.get_session_options()  # type: ignore[attr-defined]
    try:
        return options.get_session_config_entry("session.intra_op.allow_spinning") != "0"
    except Exception:  # not set: onnxruntime's default, which spins
        return True


def test_threads_past_the_cores_wait_rather_than_spin() -> None:
    """More threads than cores, spinning, take the CPU from the ones at work: ``generate
    --threads 500`` on one core ran past 60 s for 2 ids (1.2 s with 1 thread); waiting, 500
    threads run 20 calls in 0.01 s. Up to the cores, threads spin as onnxruntime sets them."""
    from layerport.runtime.session import SessionSettings, open_session, usable_cores

    cores = usable_cores()
    assert spins(open_session(gemm_model(), "gemm", SessionSettings(threads=cores)))
    assert spins(open_session(gemm_model(), "gemm", SessionSettings(threads=0)))
    assert not spins(open_session(gemm_model(), "gemm", SessionSettings(threads=cores + 1)))
    waiting = SessionSettings(threads=1, spinning=False)
    assert not spins(open_session(gemm_model(), "gemm", waiting))
