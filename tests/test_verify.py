"""Verification: the comparison, the grid, streaming, and re-checking files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from layerport import Dim, LayerSpec, Streaming, Tensor, Tolerance
from layerport.config import resolve_config
from layerport.errors import VerificationFailed
from layerport.plugins import get_registry
from layerport.verify.compare import compare_arrays

from conftest import SpecPlugin, run_process

TOLERANCE = Tolerance(atol=1e-5, rtol=1e-4)


def test_compare_passes_within_tolerance() -> None:
    expected = np.array([1.0, -2.0, 0.0], np.float32)
    result = compare_arrays("y", "case", expected + np.float32(5e-6), expected, TOLERANCE)
    assert result.passed
    assert result.max_abs_error == pytest.approx(5e-6, rel=1e-2)


def test_compare_reports_where_and_what_would_pass() -> None:
    expected = np.zeros((2, 3), np.float64)
    actual = expected.copy()
    actual[1, 2] = 0.5
    actual[0, 0] = 1e-6
    result = compare_arrays("y", "batch=2", actual, expected, TOLERANCE)
    assert not result.passed
    assert result.worst_index == (1, 2)
    assert result.worst_actual == 0.5 and result.worst_expected == 0.0
    assert result.needed_atol == pytest.approx(0.5)
    assert result.needed_rtol == float("inf")  # expected is 0 there: no rtol can pass
    assert "max abs error 0.5; worst element [1, 2] (onnxruntime 0.5, eager 0)" in result.describe()


def test_needed_tolerances_are_the_smallest_that_pass() -> None:
    expected = np.array([1.0, 10.0])
    actual = np.array([1.001, 10.0])
    result = compare_arrays("y", "c", actual, expected, Tolerance(atol=0.0, rtol=0.0))
    assert compare_arrays("y", "c", actual, expected, Tolerance(result.needed_atol, 0.0)).passed
    assert compare_arrays("y", "c", actual, expected, Tolerance(0.0, result.needed_rtol)).passed
    assert not compare_arrays(
        "y", "c", actual, expected, Tolerance(result.needed_atol * 0.99, 0)
    ).passed


def test_a_tolerance_of_the_range_judges_an_element_near_zero_by_the_output_s_range() -> None:
    """int8's rule: 0.001 of max |expected|, where an element-wise rtol cannot hold."""
    expected = np.array([-0.0037, 2.0])
    near = compare_arrays("y", "c", expected + 0.0019, expected, Tolerance(0.0, 0.0, 1e-3))
    assert near.passed and near.max_rel_error == pytest.approx(0.0019 / 2.0)
    assert not compare_arrays("y", "c", expected + 0.0021, expected, Tolerance(0, 0, 1e-3)).passed
    assert Tolerance(0.0, 0.0, 1e-3).describe() == "0.001 of the output's range"
    assert (
        Tolerance(1e-5, 0.0, 1e-3).describe() == "atol 1e-05, rtol 0, 0.001 of the output's range"
    )


@pytest.mark.parametrize(
    ("actual", "expected", "problem"),
    [
        (
            np.zeros(3, np.float32),
            np.zeros(4, np.float32),
            "shape [3] from onnxruntime, [4] from eager",
        ),
        (np.zeros(3, np.float64), np.zeros(3, np.float32), "dtype float64 from onnxruntime"),
        (
            np.array([0.0, np.nan], np.float32),
            np.zeros(2, np.float32),
            "onnxruntime output holds 1 NaN",
        ),
        (
            np.zeros(2, np.float32),
            np.array([np.inf, 0], np.float32),
            "eager output holds 1 NaN or Inf",
        ),
    ],
)
def test_compare_fails_on_shape_dtype_and_non_finite(actual, expected, problem) -> None:
    result = compare_arrays("y", "c", actual, expected, TOLERANCE)
    assert not result.passed
    assert problem in str(result.problem)


@pytest.fixture(scope="module")
def rnn_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("verify") / "rnn.onnx"
    assert run_process("export", "rnn", "-o", str(path)).exit_code == 0
    return path


def test_verify_file_rebuilds_the_layer_and_passes(cli, rnn_file: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    result = cli("verify", str(rnn_file), "--report", str(report), "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["passed"] is True
    assert summary["grid"] == {"batch": [1, 8, 37], "seq": [1, 32, 301]}
    assert summary["cases"] == 28  # 9 grid points x 3 draws + streaming
    assert set(summary["worst"]) == {"y", "h_n"}
    text = report.read_text()
    assert (
        "result: **passed**" in text and "| streaming seq=301 in chunks 1+32+268 | y | pass" in text
    )


def test_verify_layer_by_name(cli) -> None:
    result = cli("verify", "rnn", "--dim", "seq=7", "--trials", "1")
    assert result.exit_code == 0, result.stderr
    assert "seq [1, 7, 302]" in result.stdout  # 301 = 43 x 7, so the grid moves on


def test_tampered_weights_fail_verification(cli, rnn_file: Path, tmp_path: Path) -> None:
    model = onnx.load(rnn_file)
    tensor = next(t for t in model.graph.initializer if t.raw_data and len(t.raw_data) > 1000)
    values = np.frombuffer(tensor.raw_data, np.float32).copy()
    values[7] += 0.01
    tensor.raw_data = values.tobytes()
    tampered = tmp_path / "tampered.onnx"
    onnx.save(model, tampered)
    report = tmp_path / "tampered.md"
    result = cli("verify", str(tampered), "--report", str(report))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: verification failed in ")
    # Judged by the float64 verdict: the error, what float32 itself costs, and the bound.
    assert "export error" in result.stderr and "against float64 eager" in result.stderr
    assert "precision cost" in result.stderr and "allowed" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "result: **FAILED**" in report.read_text()


def test_a_pinned_dim_in_the_file_fails_verification(cli, rnn_file: Path, tmp_path: Path) -> None:
    model = onnx.load(rnn_file)
    seq = model.graph.input[0].type.tensor_type.shape.dim[1]
    seq.ClearField("dim_param")
    seq.dim_value = 32
    pinned = tmp_path / "pinned.onnx"
    onnx.save(model, pinned)
    result = cli("verify", str(pinned))
    assert result.exit_code == 1
    assert "declared-dynamic dim seq of x is pinned to 32 in the file" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "hidden_size=3"], "Error: -p does not apply to a file"),
        (["--dtype", "float64"], "Error: --dtype does not apply to a file"),
        (["--weights", "w.safetensors"], "Error: this file was exported from seed 0"),
        (["--dim", "nosuch=3"], "Error: unknown dim 'nosuch' for layer 'rnn'"),
    ],
)
def test_verify_file_bad_options_exit_2(cli, rnn_file: Path, args, message) -> None:
    result = cli("verify", str(rnn_file), *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message), result.stderr


class _DriftsWhenExported(torch.nn.Module):
    """Eager computes x @ W; the exported graph adds 0.01: verification must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y + 0.01 if torch.compiler.is_exporting() else y


class _IgnoresState(torch.nn.Module):
    """A recurrence that forgets h0: each chunk restarts, so streaming must fail."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        y = torch.cumsum(x, dim=1) * self.scale
        return y, y[:, -1]


def _spec(name: str, build, **extra) -> LayerSpec:
    return LayerSpec(name=name, description="A test layer.", build=build, **extra)


DRIFTS = _spec(
    "drifts",
    lambda params: _DriftsWhenExported(),
    weights=lambda params: {"linear.weight": (2, 4), "linear.bias": (2,)},
    dims=(Dim("batch", 4),),
    inputs=(Tensor("x", ("batch", "4")),),
    outputs=(Tensor("y", ("batch", "2")),),
)
FORGETS = _spec(
    "forgets",
    lambda params: _IgnoresState(),
    weights=lambda params: {"scale": ()},
    dims=(Dim("batch", 2), Dim("seq", 5, check_size=13)),
    inputs=(Tensor("x", ("batch", "seq", "3")), Tensor("h0", ("batch", "3"), optional=True)),
    outputs=(Tensor("y", ("batch", "seq", "3")), Tensor("h_n", ("batch", "3"))),
    streaming=Streaming("seq", (("h0", "h_n"),)),
)


def test_a_wrong_export_exits_1_and_keeps_the_old_file(cli, register_plugin, tmp_path) -> None:
    register_plugin(SpecPlugin(DRIFTS), "drifting")
    target = tmp_path / "drifts.onnx"
    target.write_bytes(b"the previous good file")
    result = cli("export", "drifts", "-o", str(target))
    assert result.exit_code == 1
    assert "verification failed in 9 of 9 comparisons" in result.stderr
    # The drift is 0.01 at every element: the worst one shows it against float64.
    assert "(onnxruntime -0.27039, float64 eager -0.28039)" in result.stderr
    assert target.read_bytes() == b"the previous good file"
    assert list(tmp_path.iterdir()) == [target]


def test_streaming_catches_a_layer_that_drops_its_state(register_plugin) -> None:
    from layerport.pipeline import export_layer

    register_plugin(SpecPlugin(FORGETS), "forgetful")
    config = resolve_config(get_registry(), "forgets")
    with pytest.raises(VerificationFailed, match="streaming seq=13 in chunks 1\\+5\\+7"):
        export_layer(config, trials=1)


def test_relative_error_is_max_error_over_max_reference_with_its_own_case() -> None:
    # Element by element, 1e-6 against a reference of 1e-6 would be 100%; over the output it is not.
    expected = np.array([1e-6, 2.0], np.float64)
    result = compare_arrays("y", "case", expected + np.array([1e-6, 0.0]), expected, TOLERANCE)
    assert result.max_rel_error == pytest.approx(1e-6 / 2.0)
    from layerport.verify.compare import relative_error

    assert relative_error(0.0, 0.0) == 0.0 and relative_error(1.0, 0.0) == float("inf")


def test_worst_reports_each_figure_with_its_own_case() -> None:
    from layerport.verify.report import VerificationReport

    report = VerificationReport("l", "float64", TOLERANCE, {}, {}, 1)
    small = np.array([1e-3, 1e-3])
    large = np.array([100.0, 100.0])
    report.comparisons += [
        compare_arrays("y", "small values", small + 1e-4, small, TOLERANCE),
        compare_arrays("y", "large values", large + 1e-3, large, TOLERANCE),
    ]
    worst = report.worst()["y"]
    assert worst["case"] == "large values" and worst["max_abs_error"] == pytest.approx(1e-3)
    assert worst["rel_case"] == "small values" and worst["max_rel_error"] == pytest.approx(0.1)


def test_a_large_traced_length_keeps_three_streaming_chunks(cli) -> None:
    small = ["-p", "input_size=3", "-p", "hidden_size=4", "-p", "output_size=2"]
    result = cli("verify", "rnn", *small, "--dim", "batch=2", "--dim", "seq=301", "--trials", "1")
    assert result.exit_code == 0, result.stderr
    assert "seq [1, 301, 607]" in result.stdout
    assert "seq=607 in chunks 1+301+305" in result.stdout


def test_verify_file_says_first_that_the_plugin_changed(
    cli, rnn_file: Path, tmp_path: Path
) -> None:
    model = onnx.load(rnn_file)
    props = {prop.key: prop for prop in model.metadata_props}
    props["layerport.plugin_version"].value = "0.0.1"
    props["layerport.seed"].value = "5"  # other weights: the file no longer matches eager
    changed = tmp_path / "old.onnx"
    onnx.save(model, changed)
    result = cli("verify", str(changed), "--trials", "1")
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "Error: the file was exported by layerport 0.0.1 and 0.1.0 is installed, so the "
        "layer's code may have changed; verification failed in"
    )


def test_verify_file_of_a_plugin_not_installed_names_it(
    cli, rnn_file: Path, tmp_path: Path
) -> None:
    model = onnx.load(rnn_file)
    props = {prop.key: prop for prop in model.metadata_props}
    props["layerport.plugin"].value = "layerport-lstm"
    props["layerport.plugin_version"].value = "0.3.0"
    props["layerport.qualified_name"].value = "layerport-lstm:lstm"
    props["layerport.layer"].value = "lstm"
    foreign = tmp_path / "lstm.onnx"
    onnx.save(model, foreign)
    result = cli("verify", str(foreign))
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "Error: this file was exported by layerport-lstm 0.3.0 (layer lstm), which is not "
        "installed; install it to rebuild the layer (unknown layer 'layerport-lstm:lstm'"
    )


def test_decoding_cases_run_each_prompt_with_one_step_and_the_longest() -> None:
    from layerport.verify.decoding import decode_cases, describe_position

    streaming = Streaming("seq", (), grows="past")
    grid = {"batch": [1, 4], "seq": [1, 8, 21], "past": [0, 6, 17]}
    cases = decode_cases(grid, streaming)
    assert len(cases) == 2 * 3 * 2
    assert cases[0] == ({"batch": 1}, 1, 1) and cases[-1] == ({"batch": 4}, 21, 21)
    assert describe_position(4, 8) == "the prefill (position 4)"
    assert describe_position(10, 8) == "decode step 3 (position 10)"


def test_a_stream_is_located_at_its_first_position_beyond_the_bound() -> None:
    """The earliest wrong position over every failed output: the cache's grown axis too."""
    from layerport.verify.decoding import locate_in_stream

    spec = _spec(
        "cached",
        lambda params: None,
        weights=lambda params: {},
        dims=(Dim("seq", 2), Dim("past", 2, min_size=0)),
        inputs=(Tensor("x", ("seq", "2")), Tensor("past_x", ("past", "2"))),
        outputs=(Tensor("y", ("seq", "2")), Tensor("present_x", ("past + seq", "2"))),
        streaming=Streaming("seq", (("past_x", "present_x"),), grows="past"),
    )
    truth = {"y": np.zeros((6, 2)), "present_x": np.zeros((6, 2))}
    streamed = {"y": np.zeros((6, 2)), "present_x": np.zeros((6, 2))}
    streamed["y"][5, 1] = 1.0
    streamed["present_x"][4, 0] = np.nan  # NaN is wrong too
    judged = [
        compare_arrays(name, "decoding", streamed[name], truth[name], TOLERANCE) for name in truth
    ]
    where = locate_in_stream(spec, judged, streamed, truth, prompt=3, tolerance=TOLERANCE)
    assert where == "first wrong at decode step 2 (position 4)"
    streamed["present_x"][4, 0] = 0.0
    judged = [compare_arrays("y", "decoding", streamed["y"], truth["y"], TOLERANCE)]
    assert locate_in_stream(spec, judged, streamed, truth, 3, TOLERANCE) == (
        "first wrong at decode step 3 (position 5)"
    )
