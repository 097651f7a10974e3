"""float16 and bfloat16: exports verified in the runtime each precision declares, and what
the precision costs against float64.

The oracles are torch's own modules (``nn.Linear``, ``nn.RNN`` + ``nn.Linear``) in float64
holding the same weights, and onnxruntime or onnx's reference evaluator at sizes the file
was not traced at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from hostile import assert_refused, assert_succeeded
from layerport.runtime.arrays import numpy_dtype
from layerport.runtime.session import SessionSettings, load_model

from conftest import SpecPlugin, tiny_spec

REDUCED = ["float16", "bfloat16"]


def _export(cli, tmp_path: Path, layer: str, dtype: str, *args: str) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    path = tmp_path / f"{layer}-{dtype}.onnx"
    trials = () if "--no-verify" in args else ("--trials", "1")
    result = cli("export", layer, "--dtype", dtype, "-o", str(path), *trials, *args)
    assert_succeeded(result)
    record = json.loads(cli("inspect", str(path), "--json").stdout)["layerport"]
    return path, record | {"summary": result.stdout}


@pytest.mark.parametrize("dtype", REDUCED)
def test_the_rnn_in_a_reduced_precision_matches_nn_rnn(cli, tmp_path, dtype) -> None:
    path, record = _export(cli, tmp_path, "rnn", dtype, "-p", "hidden_size=24")
    runtime = "onnx-reference" if dtype == "bfloat16" else "onnxruntime"
    verification = record["verification"]
    assert record["dtype"] == dtype and verification["engines"] == [runtime, "eager"]
    cost = verification["precision_cost"]
    assert cost["against"] == "float64 eager"
    # The cost is real and of the precision's order: one rounding is 4.9e-4 (float16)
    # or 3.9e-3 (bfloat16) of the value, and it grows a little over a recurrence.
    assert 1e-5 < max(cost["max_rel_error"].values()) < (5e-3 if dtype == "float16" else 4e-2)
    assert f"{dtype} costs max abs error" in record["summary"]
    assert ("passed in onnx-reference" in record["summary"]) == (dtype == "bfloat16")

    # The file against nn.RNN + nn.Linear in float64, holding the float weights the
    # export was made from, at sizes it was not traced at.
    from layerport.testing import build_layer

    module = build_layer("rnn", {"hidden_size": 24}, dtype="float32")
    rnn = torch.nn.RNN(128, 24, batch_first=True, dtype=torch.float64)
    rnn.load_state_dict(
        {
            "weight_ih_l0": module.wi.weight,
            "weight_hh_l0": module.wh.weight,
            "bias_ih_l0": module.wi.bias,
            "bias_hh_l0": module.wh.bias,
        }
    )
    head = torch.nn.Linear(24, 16, dtype=torch.float64)
    head.load_state_dict(module.wo.state_dict())
    session = load_model(path, SessionSettings(runtime=runtime))
    x = np.random.default_rng(3).standard_normal((3, 45, 128)).astype(np.float32)
    outputs = session.run({"x": x.astype(numpy_dtype(session.inputs[0].dtype))})
    with torch.no_grad():
        hidden, _ = rnn(
            torch.from_numpy(x.astype(numpy_dtype(session.inputs[0].dtype)).astype(np.float64))
        )
        expected = head(hidden).numpy()
    y = outputs["y"].astype(np.float64)
    assert y.shape == (3, 45, 16)
    assert np.abs(y - expected).max() <= 0.05 * np.abs(expected).max()


@pytest.mark.parametrize("dtype", REDUCED)
def test_linear_in_a_reduced_precision_matches_nn_linear(cli, tmp_path, dtype) -> None:
    params = {"in_features": 64, "out_features": 32, "activation": "sigmoid"}
    flags = [word for name, value in params.items() for word in ("-p", f"{name}={value}")]
    path, record = _export(cli, tmp_path, "linear", dtype, *flags)
    from layerport.testing import build_layer

    module = build_layer("linear", params)
    linear = torch.nn.Linear(64, 32, dtype=torch.float64)
    linear.load_state_dict(module.state_dict())
    runtime = record["verification"]["engines"][0]
    session = load_model(path, SessionSettings(runtime=runtime))
    x = (
        np.random.default_rng(4)
        .standard_normal((21, 64))
        .astype(numpy_dtype(session.inputs[0].dtype))
    )
    y = session.run({"x": x})["y"]
    assert y.dtype == numpy_dtype(session.inputs[0].dtype) and y.shape == (21, 32)
    with torch.no_grad():
        expected = torch.sigmoid(linear(torch.from_numpy(x.astype(np.float64)))).numpy()
    assert np.abs(y.astype(np.float64) - expected).max() < (2e-3 if dtype == "float16" else 2e-2)


def _bytes_without_metadata(path: Path) -> int:
    model = onnx.load(path)
    del model.metadata_props[:]
    return model.ByteSize()


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize(
    ("layer", "params"),
    [("rnn", ()), ("linear", ("-p", "in_features=64", "-p", "out_features=32"))],
)
def test_reduced_precision_files_are_at_most_055x_their_float32_size(
    cli, tmp_path, dtype, layer, params
) -> None:
    float32, _ = _export(cli, tmp_path, layer, "float32", "--no-verify", *params)
    reduced, _ = _export(cli, tmp_path, layer, dtype, "--no-verify", *params)
    assert _bytes_without_metadata(reduced) <= 0.55 * _bytes_without_metadata(float32)


def test_a_bfloat16_file_runs_through_the_reference_and_saves_float32(cli, tmp_path) -> None:
    path, _ = _export(cli, tmp_path, "rnn", "bfloat16", "--no-verify")
    assert_refused(
        cli("infer", str(path)),
        1,
        "it has no bfloat16 kernel for MatMul",
        "onnx's reference evaluator can (--runtime onnx-reference)",
    )
    saved = tmp_path / "out.npz"
    result = cli(
        "infer", str(path), "--runtime", "onnx-reference", "--dim", "seq=7", "--output", str(saved)
    )
    assert_succeeded(result)
    assert (
        "Note: output y is bfloat16, saved as float32 (numpy cannot reload bfloat16)"
        in result.stderr
    )
    with np.load(saved) as arrays:
        assert arrays["y"].dtype == np.float32 and arrays["y"].shape == (8, 7, 16)
        np.save(tmp_path / "x.npy", np.ones((2, 3, 128), np.float32))
    # float32 arrays stand in for bfloat16 inputs, as the saved outputs do.
    again = cli(
        "infer", str(path), "--runtime", "onnx-reference", "--input", f"x={tmp_path / 'x.npy'}"
    )
    assert_succeeded(again)
    assert "input x: float32 values rounded to bfloat16" in again.stderr


def test_a_precision_the_layer_does_not_declare_is_refused(cli, register_plugin) -> None:
    register_plugin(SpecPlugin(tiny_spec()), "precision-tiny")
    assert_refused(
        cli("run", "tiny", "--dtype", "float16"),
        2,
        "layer 'tiny' supports float32, float64, not float16; choose one with --dtype float32",
    )


def test_export_all_skips_layers_without_the_precision(cli, tmp_path, register_plugin) -> None:
    register_plugin(SpecPlugin(tiny_spec()), "precision-tiny")
    result = cli("export", "--all", "--dtype", "bfloat16", "--no-verify", "-o", str(tmp_path))
    assert_succeeded(result)
    assert "Note: skipping tiny: it supports float32, float64, not bfloat16" in result.stderr
    assert (tmp_path / "rnn.onnx").is_file() and not list(tmp_path.glob("tiny*"))


def test_a_second_opinion_runs_the_file_in_onnxs_reference_evaluator(cli, tmp_path) -> None:
    path, _ = _export(cli, tmp_path, "rnn", "float32", "-p", "hidden_size=24")
    result = cli("verify", str(path), "--second-opinion", "--trials", "1", "--json")
    assert_succeeded(result)
    second = json.loads(result.stdout)["second_opinion"]
    assert second["passed"] and second["engines"] == ["onnx-reference", "eager"]
    assert second["trials"] == 1 and second["grid"] == {"batch": [1, 8, 37], "seq": [1, 32, 301]}
    shown = cli("verify", str(path), "--second-opinion", "--trials", "1").stdout
    assert "second opinion: onnx-reference also passes: export error" in shown


def test_runtimes_that_disagree_fail_naming_both(cli, tmp_path, monkeypatch) -> None:
    from layerport.runtime import session

    path, _ = _export(cli, tmp_path, "linear", "float32")
    original = session.ReferenceSession.run

    def off_by_a_little(self, names, feed, options=None):  # type: ignore[no-untyped-def]
        return [output + 0.01 for output in original(self, names, feed, options)]

    monkeypatch.setattr(session.ReferenceSession, "run", off_by_a_little)
    assert_refused(
        cli("verify", str(path), "--second-opinion"),
        1,
        "the export passed in onnxruntime, but fails in onnx-reference in",
        "that points at a bug in one of the runtimes, not in the export",
    )


def test_a_second_opinion_needs_a_file(cli) -> None:
    assert_refused(
        cli("verify", "rnn", "--second-opinion"),
        2,
        "--second-opinion checks a file: give an .onnx file",
    )


def test_bench_times_precisions_side_by_side(cli) -> None:
    result = cli(
        "bench", "linear", "--dtype", "float32", "--dtype", "float16", "--dtype", "bfloat16",
        "--dtype", "float64", "--min-time", "0.05", "--json",
    )  # fmt: skip
    assert_succeeded(result)
    data = json.loads(result.stdout)
    assert data["dtype"] == "float32"
    # float64 is held to float32 eager within float32's tolerance, the looser one.
    assert {
        "onnxruntime", "onnxruntime-float16", "onnx-reference-bfloat16", "onnxruntime-float64"
    } <= set(data["engines"])  # fmt: skip
    assert "onnxruntime_over_onnxruntime-float16" in data["ratios"]


def test_only_bench_takes_several_dtypes(cli) -> None:
    assert_refused(
        cli("run", "linear", "--dtype", "float16", "--dtype", "float32"),
        2,
        "--dtype is given more than once; only 'layerport bench' compares precisions",
    )


def test_infer_runs_a_verified_bfloat16_file_in_the_runtime_that_verified_it(cli, tmp_path) -> None:
    path, _ = _export(cli, tmp_path, "linear", "bfloat16")
    result = cli("infer", str(path), "--json")
    assert_succeeded(result)
    assert json.loads(result.stdout)["runtime"] == "onnx-reference"


def test_show_lists_the_precisions_and_their_runtimes(cli) -> None:
    described = json.loads(cli("show", "rnn", "--json").stdout)
    assert described["precisions"]["bfloat16"] == "onnx-reference"
    assert "bfloat16 (onnx-reference)" in cli("show", "rnn").stdout
