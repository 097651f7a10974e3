"""Models that crash onnxruntime, make it talk, or that it cannot run: ``infer`` on strangers' files.

onnxruntime 1.32 segfaults creating a session for some valid graphs (issue 10).
layerport opens those without the optimizer that crashes (the guard), and creates
every session for a file in a forked child first (the isolation), so that any
other crash is one ``Error:`` line. Whatever could crash runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hostile import BUILTINS_ONLY, assert_refused, assert_succeeded
from layerport.runtime import isolation
from layerport.runtime.failures import crashes_nchwc_transformer

from conftest import Result, run_process

FLOAT16_RNN = Path("/work/shared/cases/rnn_fp16.onnx")
needs_float16_rnn = pytest.mark.skipif(
    not FLOAT16_RNN.is_file(), reason="the shared float16 rnn case is not on this machine"
)
# The crash is in the NCHWc transformer, which onnxruntime registers on x86 with AVX2 and up.
crashes_here = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"),
    reason="onnxruntime's NCHWc transformer runs on x86-64 only",
)


def run_patched(patch: str, *args: str) -> Result:
    """``layerport ARGS`` in a fresh process, after running the Python in ``patch``."""
    program = f"{patch}\nfrom layerport.cli import main\nmain(sys.argv[1:])\n"
    completed = subprocess.run(
        [sys.executable, "-c", "import sys\n" + program, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **BUILTINS_ONLY},
        timeout=600,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def _checked(graph: onnx.GraphProto, opset: int = 18) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _value(name: str, element_type: int, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, element_type, shape)


# ---------------------------------------------------------------------------
# Graphs that crash onnxruntime 1.32 without the guard


def _branches(source: str, output: str) -> dict[str, onnx.GraphProto]:
    """An If's two branches: ``-source`` or ``source``, float32 [s, b, 8]."""
    then = helper.make_graph(
        [helper.make_node("Neg", [source], [f"{output}_then"])],
        "then",
        [],
        [_value(f"{output}_then", TensorProto.FLOAT, ["s", "b", 8])],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", [source], [f"{output}_else"])],
        "else",
        [],
        [_value(f"{output}_else", TensorProto.FLOAT, ["s", "b", 8])],
    )
    return {"then_branch": then, "else_branch": other}


def _chain(
    variant: str, source: str, output: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Transpose -> Cast -> MatMul from ``source`` (float32 [s, b, 8]) to ``output``."""
    rng = np.random.default_rng(0)
    w32 = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w32")
    w16 = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float16), "w16")
    transpose = helper.make_node("Transpose", ["cast_in"], ["turned"], perm=[1, 0, 2])
    if variant in ("cast-from-int32", "castlike"):
        cast_in = helper.make_node("Cast", [source], ["cast_in"], to=TensorProto.INT32)
        cast = (
            helper.make_node("Cast", ["turned"], ["cast_out"], to=TensorProto.FLOAT)
            if variant == "cast-from-int32"
            else helper.make_node("CastLike", ["turned", "w32"], ["cast_out"])
        )
        matmul = helper.make_node("MatMul", ["cast_out", "w32"], [output])
        return [cast_in, transpose, cast, matmul], [w32]
    # float16-matmul: no Cast in the file; onnxruntime inserts one before the MatMul.
    cast_in = helper.make_node("Cast", [source], ["cast_in"], to=TensorProto.FLOAT16)
    matmul = helper.make_node("MatMul", ["turned", "w16"], ["product"])
    back = helper.make_node("Cast", ["product"], [output], to=TensorProto.FLOAT)
    return [cast_in, transpose, matmul, back], [w16]


def crashing_model(variant: str) -> onnx.ModelProto:
    """A float32-in, float32-out model with an If beside a Transpose -> Cast -> MatMul chain.

    ``nested`` puts the chain and a second If inside the outer If's branch.
    """
    zero = numpy_helper.from_array(np.array(0, np.float32), "zero")
    condition = [
        helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "zero"], ["c"]),
    ]
    inputs = [_value("x", TensorProto.FLOAT, ["s", "b", 8])]
    outputs = [
        _value("z", TensorProto.FLOAT, ["s", "b", 8]),
        _value("y", TensorProto.FLOAT, ["b", "s", 4]),
    ]
    if variant != "nested":
        chain, weights = _chain(variant, "x", "y")
        if_node = helper.make_node("If", ["c"], ["z"], **_branches("x", "z"))
        graph = helper.make_graph([*condition, if_node, *chain], variant, inputs, outputs)
        graph.initializer.extend([zero, *weights])
        return _checked(graph)
    chain, weights = _chain("cast-from-int32", "x", "branch_y")
    inner = helper.make_node("If", ["c"], ["inner_z"], **_branches("x", "inner_z"))
    then = helper.make_graph(
        [inner, *chain],
        "then",
        [],
        [_value("branch_y", TensorProto.FLOAT, ["b", "s", 4])],
    )
    other = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["else_turned"], perm=[1, 0, 2]),
            helper.make_node("MatMul", ["else_turned", "w32"], ["branch_y_else"]),
        ],
        "else",
        [],
        [_value("branch_y_else", TensorProto.FLOAT, ["b", "s", 4])],
    )
    graph = helper.make_graph(
        [*condition, helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
        variant,
        inputs,
        [_value("y", TensorProto.FLOAT, ["b", "s", 4])],
    )
    graph.initializer.extend([zero, *weights])
    return _checked(graph)


VARIANTS = ("cast-from-int32", "castlike", "float16-matmul", "nested")


def float16_rnn_inputs(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Inputs for the shared float16 rnn (batch 2, seq 5), saved as x.npy and h0.npy."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 5, 128)).astype(np.float16)
    h0 = (rng.standard_normal((2, 64)) * 0.5).astype(np.float16)
    np.save(folder / "x.npy", x)
    np.save(folder / "h0.npy", h0)
    return x, h0


def float16_rnn_in_numpy(x: np.ndarray, h0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The shared rnn's function in float32 numpy, from the file's own weights."""
    weights = {
        tensor.name: numpy_helper.to_array(tensor).astype(np.float32)
        for tensor in onnx.load(FLOAT16_RNN).graph.initializer
    }
    projected = x.astype(np.float32) @ weights["val_3"] + weights["add"]
    hidden = h0.astype(np.float32)
    states = []
    for step in range(x.shape[1]):
        hidden = np.tanh(hidden @ weights["t"] + projected[:, step])
        states.append(hidden)
    y = np.stack(states, axis=1) @ weights["val_5"] + weights["wo.bias"]
    return y, hidden


# ---------------------------------------------------------------------------
# The guard


@needs_float16_rnn
def test_float16_rnn_runs_and_matches_float32_numpy(tmp_path) -> None:
    x, h0 = float16_rnn_inputs(tmp_path)
    result = run_process(
        "infer", str(FLOAT16_RNN),
        "--input", f"x={tmp_path / 'x.npy'}", "--input", f"h0={tmp_path / 'h0.npy'}",
        "--output", str(tmp_path / "out.npz"),
        env=BUILTINS_ONLY,
    )  # fmt: skip
    assert_succeeded(result)
    assert result.stderr == f"saved y, h_n to {tmp_path / 'out.npz'}\n"
    expected_y, expected_h = float16_rnn_in_numpy(x, h0)
    with np.load(tmp_path / "out.npz") as saved:
        assert saved["y"].dtype == np.float16 and saved["y"].shape == (2, 5, 16)
        assert saved["h_n"].dtype == np.float16 and saved["h_n"].shape == (2, 64)
        assert np.isfinite(saved["y"]).all() and np.isfinite(saved["h_n"]).all()
        # float16 keeps 11 bits: about 3 decimal digits at these magnitudes.
        np.testing.assert_allclose(saved["y"].astype(np.float32), expected_y, atol=2e-2)
        np.testing.assert_allclose(saved["h_n"].astype(np.float32), expected_h, atol=2e-2)


@needs_float16_rnn
def test_float16_rnn_runs_on_generated_inputs() -> None:
    result = run_process(
        "infer", str(FLOAT16_RNN), "--dim", "batch=2", "--dim", "seq=3", "--json",
        env=BUILTINS_ONLY,
    )  # fmt: skip
    assert_succeeded(result)
    outputs = json.loads(result.stdout)["outputs"]
    assert outputs["y"]["dtype"] == "float16" and outputs["y"]["shape"] == [2, 3, 16]


@pytest.mark.parametrize("variant", VARIANTS)
def test_guarded_graphs_run(tmp_path, variant) -> None:
    path = _save(crashing_model(variant), tmp_path / f"{variant}.onnx")
    result = run_process("infer", str(path), "--dim", "s=3", "--dim", "b=2", env=BUILTINS_ONLY)
    assert_succeeded(result)
    assert "y" in result.stdout


@crashes_here
@pytest.mark.parametrize("variant", [*VARIANTS, "float16-rnn"])
def test_without_the_guard_onnxruntime_crashes_and_infer_says_so(tmp_path, variant) -> None:
    """The guard is needed: switched off, onnxruntime segfaults, and the isolation reports it."""
    if variant == "float16-rnn":
        if not FLOAT16_RNN.is_file():
            pytest.skip("the shared float16 rnn case is not on this machine")
        float16_rnn_inputs(tmp_path)
        path = FLOAT16_RNN
        inputs = ["--input", f"x={tmp_path / 'x.npy'}", "--input", f"h0={tmp_path / 'h0.npy'}"]
    else:
        path = _save(crashing_model(variant), tmp_path / f"{variant}.onnx")
        inputs = ["--dim", "s=3", "--dim", "b=2"]
    result = run_patched(
        "import layerport.runtime.session as session\n"
        "session.crashes_nchwc_transformer = lambda model: False",
        "infer", str(path), *inputs,
    )  # fmt: skip
    assert_refused(
        result,
        1,
        f"onnxruntime 1.32.0 crashed (SIGSEGV) while creating a session for {path}",
        "this is an onnxruntime bug, which a lower graph optimization level may avoid",
    )


def float32_conv_model() -> onnx.ModelProto:
    """A float32 Conv, the kind of graph NCHWc speeds up."""
    weight = numpy_helper.from_array(
        np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w"
    )
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "conv",
        [_value("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [_value("y", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        [weight],
    )
    return _checked(graph, opset=17)


def _as_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with every float16 value and weight in float32."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graphs = [copy.graph]
    while graphs:
        graph = graphs.pop()
        for value in (*graph.input, *graph.output, *graph.value_info):
            if value.type.tensor_type.elem_type == TensorProto.FLOAT16:
                value.type.tensor_type.elem_type = TensorProto.FLOAT
        for index, tensor in enumerate(graph.initializer):
            if tensor.data_type == TensorProto.FLOAT16:
                array = numpy_helper.to_array(tensor).astype(np.float32)
                graph.initializer[index].CopyFrom(numpy_helper.from_array(array, tensor.name))
        graphs.extend(
            attribute.g for node in graph.node for attribute in node.attribute if attribute.g.node
        )
    onnx.checker.check_model(copy, full_check=True)
    return copy


@needs_float16_rnn
def test_guard_triggers_for_the_float16_scan_and_its_kin() -> None:
    assert crashes_nchwc_transformer(onnx.load(FLOAT16_RNN))
    for variant in VARIANTS:
        assert crashes_nchwc_transformer(crashing_model(variant)), variant


@needs_float16_rnn
def test_guard_never_triggers_for_float32_conv_or_the_float32_rnn() -> None:
    assert not crashes_nchwc_transformer(float32_conv_model())
    # The same Scan -> Transpose -> MatMul in float32 has no Cast, and is safe.
    assert not crashes_nchwc_transformer(_as_float32(onnx.load(FLOAT16_RNN)))


def test_guard_needs_control_flow_in_the_same_graph() -> None:
    model = crashing_model("cast-from-int32")
    graph = model.graph
    if_node = next(node for node in graph.node if node.op_type == "If")
    graph.node.remove(if_node)
    graph.node.append(helper.make_node("Identity", ["x"], ["z"]))
    onnx.checker.check_model(model, full_check=True)
    assert not crashes_nchwc_transformer(model)


# ---------------------------------------------------------------------------
# The isolation


@pytest.mark.parametrize(
    ("signal_name", "words"),
    [
        ("SIGSEGV", "onnxruntime 1.32.0 crashed (SIGSEGV) while creating a session for"),
        ("SIGABRT", "onnxruntime 1.32.0 crashed (SIGABRT) while creating a session for"),
        ("SIGKILL", "was killed (SIGKILL; the machine may have run out of memory)"),
    ],
)
def test_a_crash_while_creating_a_session_is_one_error_line(tmp_path, signal_name, words) -> None:
    path = _save(float32_conv_model(), tmp_path / "conv.onnx")
    result = run_patched(
        "import atexit, os, signal, onnxruntime\n"
        f"onnxruntime.InferenceSession = lambda *a, **k: os.kill(os.getpid(), signal.{signal_name})\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "sys.stdout.write('written before the fork\\n')",
        "infer", str(path), "--dim", "batch=2",
    )  # fmt: skip
    assert_refused(result, 1, words, str(path))
    # The child ran no atexit handler and flushed none of the parent's buffered output.
    assert result.stdout == "written before the fork\natexit ran\n"


def test_the_child_is_reaped_and_its_crash_described(monkeypatch) -> None:
    forked: list[int] = []
    fork = os.fork

    def recording_fork() -> int:
        pid = fork()
        if pid:
            forked.append(pid)
        return pid

    monkeypatch.setattr(os, "fork", recording_fork)
    crash = isolation.crash_in_child(lambda: os.kill(os.getpid(), signal.SIGSEGV))
    assert crash is not None and crash.words() == "crashed (SIGSEGV)"
    assert isolation.crash_in_child(lambda: None) is None
    assert isolation.crash_in_child(lambda: 1 / 0) is None  # raised: the caller redoes it
    exited = isolation.crash_in_child(lambda: os._exit(3))
    assert exited is not None and exited.words() == "ended the process (exit status 3)"
    assert len(forked) == 4
    for pid in forked:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_without_fork_the_work_is_not_tried(monkeypatch) -> None:
    monkeypatch.delattr(os, "fork")
    assert not isolation.can_isolate()
    assert isolation.crash_in_child(lambda: os.kill(os.getpid(), signal.SIGSEGV)) is None


# ---------------------------------------------------------------------------
# onnxruntime's own log


def reshape_model() -> onnx.ModelProto:
    """``x`` [batch, 8] reshaped to a constant [1, 8]: it runs only at batch 1."""
    shape = numpy_helper.from_array(np.array([1, 8], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="reshape")],
        "reshape",
        [_value("x", TensorProto.FLOAT, ["batch", 8])],
        [_value("y", TensorProto.FLOAT, [1, 8])],
        [shape],
    )
    return _checked(graph, opset=17)


def test_a_failed_run_is_one_error_line_without_onnxruntimes_log(tmp_path) -> None:
    path = _save(reshape_model(), tmp_path / "reshape.onnx")
    result = run_process("infer", str(path), "--dim", "batch=2", env=BUILTINS_ONLY)
    assert_refused(result, 1, f"onnxruntime failed to run {path}", "Reshape node")
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "\x1b" not in result.stderr
    assert "[E:onnxruntime" not in result.stderr
    # --verbose lets onnxruntime's log through, and the Error: line still ends it.
    verbose = run_process("infer", str(path), "--dim", "batch=2", "--verbose", env=BUILTINS_ONLY)
    assert verbose.exit_code == 1
    assert "[E:onnxruntime" in verbose.stderr
    assert verbose.stderr.splitlines()[-1].startswith("Error: onnxruntime failed to run")


def test_a_session_for_a_file_says_nothing_on_success(tmp_path) -> None:
    path = _save(float32_conv_model(), tmp_path / "conv.onnx")
    result = run_process("infer", str(path), "--dim", "batch=2", env=BUILTINS_ONLY)
    assert_succeeded(result)
    assert result.stderr == ""


# ---------------------------------------------------------------------------
# What onnxruntime cannot run is not bad input


def float64_conv_model() -> onnx.ModelProto:
    """A valid float64 Conv: onnxruntime 1.32's CPU provider has no float64 Conv kernel."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "conv64",
        [_value("x", TensorProto.DOUBLE, ["batch", 3, 8, 8])],
        [_value("y", TensorProto.DOUBLE, ["batch", 4, 8, 8])],
        [weight],
    )
    return _checked(graph, opset=17)


def bfloat16_matmul_model() -> onnx.ModelProto:
    """A valid bfloat16 MatMul between two intermediate values, without a name."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.BFLOAT16),
            helper.make_node("MatMul", ["x16", "x16"], ["p16"]),
            helper.make_node("Cast", ["p16"], ["y"], to=TensorProto.FLOAT),
        ],
        "matmul16",
        [_value("x", TensorProto.FLOAT, [4, 4])],
        [_value("y", TensorProto.FLOAT, [4, 4])],
    )
    return _checked(graph, opset=17)


def test_no_kernel_for_a_dtype_is_work_failed(cli, tmp_path) -> None:
    path = _save(float64_conv_model(), tmp_path / "conv64.onnx")
    assert_refused(
        cli("infer", str(path), "--dim", "batch=2"),
        1,
        f"onnxruntime 1.32.0 cannot run {path}: it has no float64 kernel for Conv (node 'conv')",
    )
    path = _save(bfloat16_matmul_model(), tmp_path / "matmul16.onnx")
    assert_refused(
        cli("infer", str(path)),
        1,
        "it has no bfloat16 kernel for MatMul (an unnamed node)",
    )


def test_other_session_failures_stay_bad_files(cli, tmp_path) -> None:
    # onnx's checker does not read auto_pad's value; onnxruntime refuses it on loading.
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", auto_pad="SIDEWAYS")],
        "pad",
        [_value("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [_value("y", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [weight],
    )
    path = _save(_checked(graph, opset=17), tmp_path / "pad.onnx")
    result = cli("infer", str(path), "--dim", "batch=2")
    assert_refused(
        result,
        2,
        f"onnxruntime 1.32.0 cannot load {path}",
        "Unknown AutoPadType String",
        "onnx's reference evaluator loads it (--runtime onnx-reference)",
    )
    assert "[ONNXRuntimeError]" not in result.stderr and "onnxruntime_src" not in result.stderr
