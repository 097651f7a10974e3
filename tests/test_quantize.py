"""int8: onnxruntime's dynamic quantizer on a float32 export, judged like int8.

Two oracles. ``nn.Linear`` (and the layer in float64) holding the same weights
measures what int8 costs, relative to the output's range; the file must stay
within 3% (linears) or 5% (recurrent layers) of it. The file itself is held to a
numpy run of the same quantization (``verify.quantized``). No test here depends
on which x86 CPU runs it: the default recipe's 7-bit weights cannot saturate
(``runtime.int8``), and the one test of a saturating file accepts either CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from hostile import assert_refused, assert_succeeded
from layerport.runtime.int8 import INT16_MAX, int8_weights_worst_pair_sum
from layerport.runtime.session import load_model

WIDE = ("-p", "in_features=512", "-p", "out_features=512")


def _record(cli, path: Path) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(cli("inspect", str(path), "--json").stdout)


def _relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _linear_cost(path: Path, size: int, batch: int) -> float:
    """The int8 file against nn.Linear in float64 with the same weights, at a batch not traced."""
    from layerport.testing import build_layer

    linear = build_layer("linear", {"in_features": size, "out_features": size}).double()
    x = np.random.default_rng(5).standard_normal((batch, size)).astype(np.float32)
    y = load_model(path).run({"x": x})["y"]
    with torch.no_grad():
        expected = linear(torch.from_numpy(x).double()).numpy()
    return _relative(y, expected)


def _float_source(size: int) -> onnx.ModelProto:
    """The float32 linear a file of that size was quantized from, as the quantizer takes it."""
    from layerport.config import resolve_config
    from layerport.eager.build import build_module
    from layerport.export.quantize import gemm_as_matmul
    from layerport.export.torch_onnx import export_onnx
    from layerport.plugins import get_registry

    params = {"in_features": size, "out_features": size}
    config = resolve_config(get_registry(), "linear", params)
    return gemm_as_matmul(export_onnx(build_module(config), config, 18))


def _swap_output_rows(path: Path, out: Path) -> None:
    """The file with two output rows of its weight swapped (columns of the (K, N) int8 matrix)."""
    model = onnx.load(path)
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name.endswith("_quantized"):
            weight = numpy_helper.to_array(tensor).copy()
            weight[:, [3, 300]] = weight[:, [300, 3]]
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(weight, tensor.name))
    onnx.save(model, out)


def _with_8_bit_weights(path: Path, out: Path) -> None:
    """The file as the old recipe wrote it: the layer's weights over all of int8, [-127, 127]."""
    model = onnx.load(path)
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    name = next(name for name in initializers if name.endswith("_quantized"))
    base = name[: -len("_quantized")]
    source = {tensor.name: tensor for tensor in _float_source(512).graph.initializer}
    weight = numpy_helper.to_array(source[base])
    scale = np.float32(np.abs(weight).max() / 127)
    wide = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    initializers[name].CopyFrom(numpy_helper.from_array(wide, name))
    initializers[f"{base}_scale"].CopyFrom(numpy_helper.from_array(scale, f"{base}_scale"))
    onnx.save(model, out)


def test_an_int8_linear_is_quantized_verified_and_within_3_percent(cli, tmp_path) -> None:
    path = tmp_path / "linear_int8.onnx"
    result = cli("export", "linear", *WIDE, "--quantize", "int8", "-o", str(path))
    assert_succeeded(result)
    assert "passed: int8 against the same quantization in numpy, max abs error" in result.stdout
    assert "int8 costs max abs error" in result.stdout and "against float64" in result.stdout
    assert "256.0 KiB of weights quantized" in result.stdout
    described = _record(cli, path)
    recipe = described["layerport"]["quantization"]
    assert recipe["quantize"] == "int8" and recipe["weight_type"] == "QInt8"
    assert recipe["weight_bits"] == 7 and recipe["per_channel"] is False
    assert recipe["ops"] == {"MatMulInteger": 1}
    assert recipe["quantized_bytes"] == 512 * 512
    assert recipe["worst_pair_sum"] <= INT16_MAX
    assert described["layerport"]["dtype"] == "float32"
    verification = described["layerport"]["verification"]
    assert verification["quantization"] == "int8"
    assert verification["engines"] == ["onnxruntime", "int8 reference"]
    assert verification["precision_cost"]["max_rel_error"]["y"] <= 0.03
    assert described["initializer_types"]["int8"]["bytes"] >= 512 * 512
    # Inputs and outputs stay float32: int8 is a recipe, not a dtype.
    assert [v["dtype"] for v in described["inputs"] + described["outputs"]] == ["float32"] * 2

    cost = _linear_cost(path, 512, 23)
    assert 1e-4 < cost <= 0.03  # int8 costs something, and at most 3% of the range

    verified = cli("verify", str(path))
    assert_succeeded(verified)
    assert "0.001 of the output's range" in verified.stdout  # the layer's int8 tolerance
    assert_succeeded(cli("infer", str(path), "--dim", "batch=3"))
    inspected = cli("inspect", str(path)).stdout
    assert (
        "quantized:  int8 dynamic (7-bit QInt8 weights; MatMulInteger 1), by onnxruntime"
        in inspected
    )
    assert "right on every CPU (a weight pair sums to at most 32640 <= 32767)" in inspected


def test_the_same_file_with_two_weight_rows_swapped_fails(cli, tmp_path) -> None:
    path, swapped = tmp_path / "linear_int8.onnx", tmp_path / "swapped.onnx"
    assert_succeeded(cli("export", "linear", *WIDE, "--quantize", "int8", "-o", str(path)))
    _swap_output_rows(path, swapped)
    assert_refused(
        cli("verify", str(swapped)),
        1,
        "verification failed in",
        "(0.001 of the output's range); worst: y at batch=",
        "int8 reference",
    )


def test_8_bit_weights_need_vnni_and_saturate_in_the_avx2_emulation(cli, tmp_path) -> None:
    from layerport.verify.quantized import SameQuantizationEngine, saturation_note

    path, wide = tmp_path / "linear_int8.onnx", tmp_path / "wide.onnx"
    assert_succeeded(cli("export", "linear", *WIDE, "--quantize", "int8", "-o", str(path)))
    _with_8_bit_weights(path, wide)
    model = onnx.load(wide)
    assert int8_weights_worst_pair_sum(model) > INT16_MAX
    assert "needs VNNI: wrong on x86 CPUs without it" in cli("inspect", str(wide)).stdout

    # In numpy, on any CPU: the AVX2 arithmetic is far from the exact one.
    from layerport.testing import build_layer

    float32 = _float_source(512)
    x = {"x": np.random.default_rng(5).standard_normal((37, 512)).astype(np.float32)}
    exact = SameQuantizationEngine(model, float32, "wide").run(x)
    saturated = SameQuantizationEngine(model, float32, "wide", saturating=True).run(x)
    assert _relative(saturated["y"], exact["y"]) > 0.05
    with torch.no_grad():
        reference = build_layer("linear", {"in_features": 512, "out_features": 512})(
            torch.from_numpy(x["x"])
        ).numpy()
    assert _relative(exact["y"], reference) <= 0.03
    # A file that computes the saturated result is blamed on saturation, by name.
    note = saturation_note(saturated, exact, saturated)
    assert note is not None
    for words in ("saturates on this CPU", "lacks VNNI", "default int8 recipe (7-bit weights)"):
        assert words in note
    assert saturation_note(exact, exact, saturated) is None

    # onnxruntime on this CPU does one or the other; verify says which, either way.
    ours = load_model(wide).run(x)["y"]
    verified = cli("verify", str(wide))
    if _relative(ours, saturated["y"]) < _relative(ours, exact["y"]):
        assert_refused(verified, 1, "int8 arithmetic saturates on this CPU", "lacks VNNI")
    else:
        assert_succeeded(verified)


def test_the_default_recipe_never_saturates_in_the_avx2_emulation(cli, tmp_path) -> None:
    """The bound on the files themselves; and the emulation agrees with the exact result."""
    from layerport.verify.quantized import SameQuantizationEngine

    for args in (WIDE, ("-p", "input_size=512", "-p", "hidden_size=512")):
        layer = "linear" if args is WIDE else "rnn"
        path = tmp_path / f"{layer}.onnx"
        assert_succeeded(
            cli("export", layer, *args, "--quantize", "int8", "-o", str(path), "--no-verify")
        )
        model = onnx.load(path)
        assert 0 < int8_weights_worst_pair_sum(model) <= INT16_MAX
    model = onnx.load(tmp_path / "linear.onnx")
    x = {"x": np.random.default_rng(1).standard_normal((16, 512)).astype(np.float32) * 40}
    source = _float_source(512)
    exact = SameQuantizationEngine(model, source, "linear").run(x)
    saturated = SameQuantizationEngine(model, source, "linear", saturating=True).run(x)
    assert (exact["y"] == saturated["y"]).all()


@pytest.mark.parametrize(
    "layer_args",
    [
        ("rnn", "-p", "input_size=512", "-p", "hidden_size=512"),
        ("elman", "-p", "input_size=256", "-p", "hidden_size=256"),
    ],
    ids=["rnn", "elman"],
)
def test_int8_recurrent_layers_quantize_their_input_projection_within_5_percent(
    cli, tmp_path, layer_args
) -> None:
    path = tmp_path / "int8.onnx"
    result = cli("export", *layer_args, "--quantize", "int8", "-o", str(path), "--json")
    assert_succeeded(result)
    summary = json.loads(result.stdout)
    assert summary["quantization"]["quantized_bytes"] > 0
    assert summary["verification"]["precision_cost"]["max_rel_error"]
    assert max(summary["verification"]["precision_cost"]["max_rel_error"].values()) <= 0.05
    assert summary["quantization"]["worst_pair_sum"] <= INT16_MAX
    model = onnx.load(path)
    assert [n.op_type for n in model.graph.node].count("MatMulInteger") == 1
    scan = next(node for node in model.graph.node if node.op_type == "Scan")
    body = scan.attribute[0].g
    assert "MatMulInteger" not in [node.op_type for node in body.node]


@pytest.mark.parametrize(
    "layer_args",
    [("lstm",), ("gru", "-p", "input_size=256", "-p", "hidden_size=256"), ("rnn",)],
    ids=["lstm", "large-gru", "small-rnn"],
)
def test_int8_refuses_a_layer_where_nothing_would_be_quantized(cli, tmp_path, layer_args) -> None:
    path = tmp_path / "x.onnx"
    assert_refused(
        cli("export", *layer_args, "--quantize", "int8", "-o", str(path)),
        2,
        f"int8 would quantize nothing in {layer_args[0]}",
        "so the file would compute in float32; export it without quantization",
    )
    assert not path.exists()


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
def test_the_int8_4096_linear_is_within_3_percent_and_at_most_03x_its_float32_size(
    cli, tmp_path
) -> None:
    params = ("-p", "in_features=4096", "-p", "out_features=4096")
    float32, int8 = tmp_path / "f.onnx", tmp_path / "q.onnx"
    assert_succeeded(cli("export", "linear", *params, "--no-verify", "-o", str(float32)))
    result = cli("export", "linear", *params, "--quantize", "int8", "-o", str(int8), "--json")
    assert_succeeded(result)
    summary = json.loads(result.stdout)
    assert summary["verification"]["passed"]
    assert summary["verification"]["precision_cost"]["max_rel_error"]["y"] <= 0.03
    assert 0 < summary["quantization"]["worst_pair_sum"] <= INT16_MAX
    assert _linear_cost(int8, 4096, 64) <= 0.03
    assert int8.stat().st_size <= 0.3 * float32.stat().st_size
