"""int8: onnxruntime's dynamic quantizer on a float32 export, verified against float32 eager.

The oracle for the numbers is ``nn.Linear`` holding the same float32 weights, at a batch
size the file was not traced at; the file runs in a real onnxruntime session.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from hostile import assert_refused, assert_succeeded
from layerport.runtime.session import load_model

WIDE = ("-p", "in_features=512", "-p", "out_features=512")


def _record(cli, path: Path) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(cli("inspect", str(path), "--json").stdout)


def test_an_int8_linear_is_quantized_verified_and_matches_nn_linear(cli, tmp_path) -> None:
    path = tmp_path / "linear_int8.onnx"
    result = cli("export", "linear", *WIDE, "--quantize", "int8", "-o", str(path))
    assert_succeeded(result)
    assert "passed: int8 against float32 eager, max abs error" in result.stdout
    assert "(relative " in result.stdout
    described = _record(cli, path)
    recipe = described["layerport"]["quantization"]
    assert recipe["quantize"] == "int8" and recipe["weight_type"] == "QInt8"
    assert recipe["ops"] == {"MatMulInteger": 1}
    assert described["layerport"]["dtype"] == "float32"
    assert described["layerport"]["verification"]["quantization"] == "int8"
    assert described["initializer_types"]["int8"]["bytes"] >= 512 * 512
    # Inputs and outputs stay float32: int8 is a recipe, not a dtype.
    assert [v["dtype"] for v in described["inputs"] + described["outputs"]] == ["float32"] * 2

    from layerport.testing import build_layer

    linear = build_layer("linear", {"in_features": 512, "out_features": 512})
    x = np.random.default_rng(5).standard_normal((23, 512)).astype(np.float32)
    y = load_model(path).run({"x": x})["y"]
    with torch.no_grad():
        expected = linear(torch.from_numpy(x)).numpy()
    relative = np.abs(y - expected).max() / np.abs(expected).max()
    assert 1e-4 < relative <= 0.02  # int8 costs something, and at most 2%

    verified = cli("verify", str(path))
    assert_succeeded(verified)
    assert "atol 0.05, rtol 0.05" in verified.stdout  # the layer's int8 tolerance
    assert_succeeded(cli("infer", str(path), "--dim", "batch=3"))
    assert (
        "quantized:  int8 dynamic (QInt8 weights; MatMulInteger 1)"
        in cli("inspect", str(path)).stdout
    )


def test_small_weights_stay_float32_and_say_so(cli, tmp_path) -> None:
    path = tmp_path / "rnn_int8.onnx"
    result = cli("export", "rnn", "--quantize", "int8", "-o", str(path), "--trials", "1")
    assert_succeeded(result)
    assert (
        "Note: onnxruntime's quantizer found nothing to quantize in rnn: the file computes "
        "in float32"
    ) in result.stderr
    recipe = _record(cli, path)["layerport"]["quantization"]
    assert recipe["ops"] == {} and recipe["float32_nodes"] == 2


def test_a_large_rnn_quantizes_its_input_projection_not_its_scan(cli, tmp_path) -> None:
    path = tmp_path / "rnn_int8.onnx"
    params = ("-p", "input_size=512", "-p", "hidden_size=512")
    result = cli("export", "rnn", *params, "--quantize", "int8", "-o", str(path), "--trials", "1")
    assert_succeeded(result)
    model = onnx.load(path)
    assert [n.op_type for n in model.graph.node].count("MatMulInteger") == 1
    scan = next(node for node in model.graph.node if node.op_type == "Scan")
    body = scan.attribute[0].g
    assert "MatMulInteger" not in [node.op_type for node in body.node]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("rnn", "--quantize", "int8", "--dtype", "float16"),
            "--quantize int8 applies to a float32 export (its inputs and outputs stay "
            "float32); drop --dtype float16",
        ),
        (("rnn", "--quantize", "int4"), "Invalid value for '--quantize'"),
    ],
)
def test_bad_quantizations_are_refused(cli, tmp_path, args, message) -> None:
    assert_refused(cli("export", *args, "-o", str(tmp_path / "x.onnx")), 2, message)


def test_float16_weights_cannot_be_quantized_without_converting(cli, tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(8, 2).half().state_dict(), path)
    assert_refused(
        cli("export", "linear", "--weights", str(path), "--quantize", "int8"),
        2,
        "int8 quantizes a float32 export (its inputs and outputs stay float32), not a "
        "float16 one; drop the dtype, or convert the weights with --dtype float32",
    )


def test_bench_times_the_int8_file_beside_the_float32_one(cli) -> None:
    result = cli("bench", "linear", *WIDE, "--quantize", "int8", "--min-time", "0.05", "--json")
    assert_succeeded(result)
    data = json.loads(result.stdout)
    assert {"eager", "onnxruntime", "onnxruntime-int8"} <= set(data["engines"])
    # The float32 file's time over the int8 file's: above 1, int8 is faster.
    assert "onnxruntime_over_onnxruntime-int8" in data["ratios"]


@pytest.mark.slow
def test_the_int8_4096_linear_is_at_most_03x_its_float32_size(cli, tmp_path) -> None:
    params = ("-p", "in_features=4096", "-p", "out_features=4096", "--no-verify")
    float32, int8 = tmp_path / "f.onnx", tmp_path / "q.onnx"
    assert_succeeded(cli("export", "linear", *params, "-o", str(float32)))
    assert_succeeded(cli("export", "linear", *params, "--quantize", "int8", "-o", str(int8)))
    assert int8.stat().st_size <= 0.3 * float32.stat().st_size
