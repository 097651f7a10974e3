"""The runtime matrix: one file verified, and timed, in several runtimes at once.

The oracle stays the layer in float64 eager PyTorch; each runtime is judged by the
same verdict as the default verification. A runtime registered here perturbs one
output slightly, so the matrix must blame that runtime and no other, while
onnxruntime passes the same file in the same run.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import pytest

from hostile import assert_refused, assert_succeeded
from layerport.errors import WorkFailed
from layerport.runtime.runtimes import NAMED_RUNTIMES, NamedRuntime, select_runtimes
from layerport.runtime.session import Session

from conftest import run_process


class _PerturbedSession(Session):
    """onnxruntime, with its first output moved by ``offset``: a runtime that gets the file wrong."""

    offset = 1e-3

    def run_checked(self, complete: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = super().run_checked(complete)
        first = next(iter(outputs))
        outputs[first] = outputs[first] + np.asarray(self.offset, dtype=outputs[first].dtype)
        return outputs


class _PerturbedRuntime(NamedRuntime):
    def open(  # type: ignore[override]
        self, model, name, *, optional_inputs: Collection[str] = (), smallest=None, **settings
    ) -> Session:
        return _PerturbedSession(model, name, optional_inputs=optional_inputs)


class _BrokenRuntime(NamedRuntime):
    def open(self, model, name, **settings) -> Session:  # type: ignore[no-untyped-def, override]
        raise WorkFailed(f"the broken runtime cannot run {name}")


@pytest.fixture
def perturbed(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(NAMED_RUNTIMES, "perturbed", _PerturbedRuntime("perturbed", "test"))
    return "perturbed"


@pytest.fixture(scope="module")
def linear_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("matrix") / "linear.onnx"
    result = run_process("export", "linear", "-o", str(path), "--trials", "1")
    assert result.exit_code == 0, result.stderr
    return path


def test_every_installed_runtime_passes_the_linear_file_and_the_missing_are_skipped(
    cli, linear_file
) -> None:
    result = cli("verify", str(linear_file), "--runtimes", "all", "--trials", "1", "--json")
    assert_succeeded(result)
    matrix = json.loads(result.stdout)["runtimes"]
    assert set(matrix) == set(NAMED_RUNTIMES)
    for name, runtime in NAMED_RUNTIMES.items():
        why = runtime.missing()
        if why is None:
            assert matrix[name]["passed"] is True, (name, matrix[name])
            # The grid: batch 1, 16 and 37 at one draw each.
            assert matrix[name]["cases"] == 3
            assert matrix[name]["max_abs_error"] < 1e-4
        else:
            assert matrix[name] == {"passed": None, "skipped": why}
            assert "install:" in why
    # The optimization levels and the reference evaluator are always here.
    for name in ("ort", "ort-noopt", "ort-basic", "ort-extended", "onnx-reference"):
        assert matrix[name]["passed"] is True


def test_the_matrix_is_a_table_of_grid_points_by_runtime(cli, linear_file) -> None:
    result = cli("verify", str(linear_file), "--runtimes", "ort,ort-noopt", "--trials", "1")
    assert_succeeded(result)
    assert "runtime matrix: pass or FAIL, worst abs error, at each grid point" in result.stdout
    table = result.stdout.split("runtime matrix")[1]
    assert "ort-noopt" in table
    rows = [line for line in table.splitlines() if "batch=" in line]
    # The grid: batch 1, the traced 16, and 37, in both runtimes.
    assert [row.split()[0] for row in rows] == ["batch=1", "batch=16", "batch=37"]
    assert all(row.count("pass ") == 2 and "FAIL" not in row for row in rows)


def test_a_runtime_that_gets_the_file_wrong_fails_the_matrix_naming_it(
    cli, linear_file, perturbed
) -> None:
    result = cli("verify", str(linear_file), "--runtimes", f"ort,{perturbed}", "--trials", "1")
    assert_refused(
        result,
        1,
        "the export passed in onnxruntime, but 1 of 2 runtimes disagree",
        "perturbed (worst: y at batch=1 draw 0: export error 0.001 against float64 eager",
    )
    assert "ort (worst" not in result.stderr
    # The table shows where: every grid point fails in the perturbed runtime only.
    rows = [line for line in result.stdout.splitlines() if "batch=" in line]
    assert len(rows) == 3 and all("pass" in row and "FAIL 0.001" in row for row in rows)


def test_a_runtime_that_cannot_run_the_file_fails_the_matrix(cli, linear_file, monkeypatch) -> None:
    monkeypatch.setitem(NAMED_RUNTIMES, "broken", _BrokenRuntime("broken", "test"))
    assert_refused(
        cli("verify", str(linear_file), "--runtimes", "ort,broken", "--trials", "1"),
        1,
        "but 1 of 2 runtimes disagree",
        "broken (the broken runtime cannot run",
    )


def test_a_named_runtime_that_is_not_installed_is_bad_input(cli, linear_file, monkeypatch) -> None:
    absent = NamedRuntime(
        "absent", "test", module="layerport_no_such_runtime", install="pip install absent"
    )
    monkeypatch.setitem(NAMED_RUNTIMES, "absent", absent)
    assert_refused(
        cli("verify", str(linear_file), "--runtimes", "ort,absent"),
        2,
        "runtime absent cannot run here: layerport_no_such_runtime is not installed "
        "(install: pip install absent)",
    )
    # Under all, the same runtime is skipped, said so, and the rest pass.
    result = cli("verify", str(linear_file), "--runtimes", "all", "--trials", "1")
    assert_succeeded(result)
    assert (
        "absent: skipped: layerport_no_such_runtime is not installed (install: pip install absent)"
        in result.stdout
    )


def test_cuda_is_skipped_where_onnxruntime_has_no_cuda_provider() -> None:
    why = NAMED_RUNTIMES["ort-cuda"].missing()
    if why is None:
        pytest.skip("this machine has onnxruntime's CUDA provider")
    assert why.startswith("onnxruntime has no CUDA provider here")
    selected, skipped = select_runtimes(["all"])
    assert "ort-cuda" in skipped and "ort-cuda" not in [runtime.name for runtime in selected]


def test_openvino_is_an_optional_extra() -> None:
    openvino = NAMED_RUNTIMES["openvino"]
    assert openvino.install == "pip install 'layerport[openvino]'"
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'openvino = [\n    "openvino>=' in pyproject


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--runtimes", "ort,nope"), "unknown runtime 'nope'; the runtimes: ort, ort-noopt"),
        (("--runtimes", " , "), "give at least one runtime, or all"),
    ],
)
def test_runtime_names_are_checked(cli, linear_file, arguments, message) -> None:
    assert_refused(cli("verify", str(linear_file), *arguments), 2, message)


def test_the_matrix_needs_a_file(cli) -> None:
    assert_refused(
        cli("verify", "linear", "--runtimes", "ort"),
        2,
        "--runtimes verifies a file in each runtime: give an .onnx file",
    )


def test_bench_times_each_runtime_on_the_same_file(cli) -> None:
    result = cli(
        "bench",
        "linear",
        "--runtimes",
        "ort,ort-noopt,onnx-reference",
        "--min-time",
        "0.05",
        "--json",
    )
    assert_succeeded(result)
    engines = json.loads(result.stdout)["engines"]
    # ort is the onnxruntime engine itself; the others are added beside it.
    assert {"eager", "onnxruntime", "ort-noopt", "onnx-reference"} <= set(engines)
    assert "ort" not in engines
    for name in ("ort-noopt", "onnx-reference"):
        assert engines[name]["calls"] >= 30 and engines[name]["max_abs_error"] < 1e-4


def test_bench_refuses_to_time_a_runtime_that_gets_the_file_wrong(cli, perturbed) -> None:
    assert_refused(
        cli("bench", "linear", "--runtimes", perturbed, "--min-time", "0.05"),
        1,
        "perturbed does not compute what the eager layer computes, so timing it means nothing",
    )


@pytest.mark.slow
def test_the_rnn_passes_in_openvino(cli, tmp_path) -> None:
    pytest.importorskip("openvino")
    path = tmp_path / "rnn.onnx"
    assert_succeeded(cli("export", "rnn", "-o", str(path), "--trials", "1"))
    result = cli("verify", str(path), "--runtimes", "openvino", "--trials", "1", "--json")
    assert_succeeded(result)
    assert json.loads(result.stdout)["runtimes"]["openvino"]["passed"] is True


def test_openvino_named_without_the_extra_is_bad_input(cli, linear_file) -> None:
    if NAMED_RUNTIMES["openvino"].missing() is None:
        pytest.skip("OpenVINO is installed here")
    assert_refused(
        cli("verify", str(linear_file), "--runtimes", "openvino"),
        2,
        "runtime openvino cannot run here: openvino is not installed "
        "(install: pip install 'layerport[openvino]')",
    )


@pytest.mark.parametrize(
    ("name", "level"),
    [
        ("ort", "ORT_ENABLE_ALL"),
        ("ort-noopt", "ORT_DISABLE_ALL"),
        ("ort-basic", "ORT_ENABLE_BASIC"),
        ("ort-extended", "ORT_ENABLE_EXTENDED"),
    ],
)
def test_each_onnxruntime_level_opens_its_session_at_that_level(linear_file, name, level) -> None:
    import onnx
    import onnxruntime

    session = NAMED_RUNTIMES[name].open(onnx.load(linear_file), "linear")
    options = session._session.get_session_options()
    assert options.graph_optimization_level == getattr(onnxruntime.GraphOptimizationLevel, level)


# int8's smallest quantized layer: a weight under 256 x 256 stays float32.
WIDE = ("-p", "in_features=512", "-p", "out_features=512")


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("matrix") / "linear_int8.onnx"
    result = run_process(
        "export", "linear", *WIDE, "--quantize", "int8", "-o", str(path), "--no-verify"
    )
    assert result.exit_code == 0, result.stderr
    return path


def test_an_int8_file_is_held_to_the_same_quantization_in_each_runtime(cli, int8_file) -> None:
    runtimes = "ort-noopt,onnx-reference"
    result = cli("verify", str(int8_file), "--runtimes", runtimes, "--trials", "1", "--json")
    assert_succeeded(result)
    summary = json.loads(result.stdout)
    assert summary["quantization"] == "int8"
    for name in ("ort-noopt", "onnx-reference"):
        matrix = summary["runtimes"][name]
        assert matrix["passed"] is True and matrix["cases"] == 3
        # The same quantization, exact int32 products: 7-bit weights cannot saturate anywhere.
        assert matrix["max_abs_error"] < 1e-5


def test_a_runtime_that_gets_an_int8_file_wrong_fails_the_matrix_naming_it(
    cli, int8_file, perturbed, monkeypatch
) -> None:
    # 0.05 is past int8's tolerance (0.001 of the output's range, about 0.002 here), and far
    # under what int8 costs against float64 (0.027): only the same quantization tells them apart.
    monkeypatch.setattr(_PerturbedSession, "offset", 0.05)
    result = cli(
        "verify", str(int8_file), "--runtimes", f"onnx-reference,{perturbed}", "--trials", "1"
    )
    assert_refused(
        result,
        1,
        "the export passed in onnxruntime, but 1 of 2 runtimes disagree",
        "perturbed (worst: y at batch=",
        "max abs error 0.05; worst element",
        "(perturbed 2.01949, int8 reference 1.96949)",
    )
    assert "onnx-reference (worst" not in result.stderr
    rows = [line for line in result.stdout.splitlines() if "batch=" in line]
    assert len(rows) == 3 and all("pass 0" in row and "FAIL 0.05" in row for row in rows)


def test_a_plugin_layer_passes_in_openvino(cli, tmp_path) -> None:
    """conv1d (layerport-conv): OpenVINO's own convolution kernels, on a grid of lengths."""
    pytest.importorskip("openvino")
    path = tmp_path / "conv1d.onnx"
    assert_succeeded(cli("export", "conv1d", "-o", str(path), "--no-verify"))
    result = cli("verify", str(path), "--runtimes", "openvino", "--trials", "1", "--json")
    assert_succeeded(result)
    matrix = json.loads(result.stdout)["runtimes"]["openvino"]
    assert matrix["passed"] is True and matrix["cases"] >= 4
    assert 0 < matrix["max_abs_error"] < 1e-5


def test_openvino_computes_8_bit_int8_weights_exactly_where_avx2_saturates(int8_file) -> None:
    """OpenVINO reads MatMulInteger as a MatMul of the integers in float32: no int16 pair sums,
    so even weights over all 8 bits, which onnxruntime saturates on x86 without VNNI
    (``runtime.int8``), give the exact int8 result."""
    pytest.importorskip("openvino")
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    from layerport.verify.quantized import SaturatingMatMulInteger

    model = onnx.load(int8_file)
    for tensor in model.graph.initializer:
        if tensor.name.endswith("_quantized"):
            # Every 7-bit weight doubled, into [-127, 127]: a pair of products reaches 64770.
            doubled = np.clip(numpy_helper.to_array(tensor).astype(np.int16) * 2, -127, 127)
            tensor.CopyFrom(numpy_helper.from_array(doubled.astype(np.int8), tensor.name))
    x = {"x": np.random.default_rng(3).standard_normal((37, 512)).astype(np.float32)}
    exact = ReferenceEvaluator(model).run(None, x)[0]
    saturated = ReferenceEvaluator(model, new_ops=[SaturatingMatMulInteger]).run(None, x)[0]
    openvino = NAMED_RUNTIMES["openvino"].open(model, "wide").run(x)["y"]
    scale = float(np.abs(exact).max())
    assert np.abs(saturated - exact).max() > 0.05 * scale  # the file does saturate in AVX2
    assert np.abs(openvino - exact).max() < 1e-6 * scale
