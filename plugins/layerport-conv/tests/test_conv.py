"""conv1d and conv2d against torch.nn.Conv1d and Conv2d holding the same weights.

The files run in onnxruntime at lengths they were not traced at, across strides,
paddings, dilations and groups; the derived output length is checked in the
file itself, and below the smallest length every command refuses with the minimum.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from layerport.plugin import CHECKS, build_layer, load_model
from layerport.plugin import cli as layerport_cli


def _cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(layerport_cli, list(args))


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("layer", ["conv1d", "conv2d"])
def test_conformance(check, layer: str) -> None:
    check(layer)


CASES = [
    {"stride": 1, "padding": 0, "dilation": 1},
    {"stride": 2, "padding": 1, "dilation": 1},
    {"stride": 3, "padding": 0, "dilation": 2, "kernel_size": 5},
    {"stride": 1, "padding": 2, "dilation": 3, "groups": 2, "bias": False},
]


@pytest.mark.parametrize(
    "case", CASES, ids=lambda case: "-".join(f"{k}{v}" for k, v in case.items())
)
def test_conv1d_matches_nn_conv1d_at_untraced_lengths(tmp_path, case) -> None:
    flags = [
        word for name, value in case.items() for word in ("-p", f"{name}={str(value).lower()}")
    ]
    path = tmp_path / "conv.onnx"
    result = _cli("export", "conv1d", *flags, "-o", str(path), "--trials", "1")
    assert result.exit_code == 0, result.output
    params = {
        "in_channels": 4,
        "out_channels": 6,
        "kernel_size": 3,
        "groups": 1,
        "bias": True,
    } | case
    module = build_layer("conv1d", params)
    oracle = torch.nn.Conv1d(
        4, 6, params["kernel_size"], stride=params["stride"], padding=params["padding"],
        dilation=params["dilation"], groups=params["groups"], bias=params["bias"],
    )  # fmt: skip
    oracle.load_state_dict(module.state_dict())
    session = load_model(path)
    smallest = max(1, params["dilation"] * (params["kernel_size"] - 1) + 1 - 2 * params["padding"])
    for batch, length in ((3, smallest), (2, 57), (1, 100)):
        x = np.random.default_rng(length).standard_normal((batch, 4, length)).astype(np.float32)
        y = session.run({"x": x})["y"]
        with torch.no_grad():
            expected = oracle(torch.from_numpy(x)).numpy()
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, atol=1e-5)
    # The output's length is symbolic in the file, named by its formula.
    output = onnx.load(path).graph.output[0].type.tensor_type.shape.dim
    assert output[2].dim_param.startswith("(length + 2 * ")


def test_conv2d_matches_nn_conv2d(tmp_path) -> None:
    path = tmp_path / "conv2d.onnx"
    result = _cli(
        "export", "conv2d", "-p", "stride=2", "-p", "padding=1", "-o", str(path), "--trials", "1"
    )
    assert result.exit_code == 0, result.output
    module = build_layer("conv2d", {"stride": 2, "padding": 1})
    x = np.random.default_rng(0).standard_normal((3, 4, 17, 9)).astype(np.float32)
    y = load_model(path).run({"x": x})["y"]
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    assert y.shape == (3, 6, 9, 5)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_show_prints_the_derived_length_and_the_smallest() -> None:
    shown = _cli("show", "conv1d", "--json")
    described = json.loads(shown.output)
    y = next(t for t in described["outputs"] if t["name"] == "y")
    assert y["dims_text"].endswith(
        "(length + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1"
    )
    length = next(d for d in described["dims"] if d["name"] == "length")
    assert length["min_size"] == "dilation * (kernel_size - 1) + 1 - 2 * padding"
    assert length["smallest"] == 3


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layerport", *args], capture_output=True, text=True
    )


def test_a_length_below_the_smallest_is_refused_naming_the_minimum(tmp_path) -> None:
    message = (
        "dim length of layer 'conv1d' must be at least 3, got 2 (its smallest size is "
        "dilation * (kernel_size - 1) + 1 - 2 * padding, with dilation=1, kernel_size=3, "
        "padding=0); set it with --dim length=3"
    )
    result = _run("run", "conv1d", "--dim", "length=2")
    assert result.returncode == 2 and result.stderr.strip() == f"Error: {message}", result.stderr
    path = tmp_path / "conv.onnx"
    assert _cli("export", "conv1d", "-o", str(path), "--trials", "1").exit_code == 0
    inferred = _run("infer", str(path), "--dim", "length=2")
    assert inferred.returncode == 2
    assert "dim length is 2 in input x, but must be at least 3" in inferred.stderr
    assert _run("infer", str(path), "--dim", "length=3").returncode == 0


def test_groups_that_do_not_divide_the_channels_are_refused() -> None:
    result = _run("run", "conv1d", "-p", "groups=4", "-p", "in_channels=6")
    assert result.returncode == 2
    assert "in_channels=6 is not divisible by groups=4" in result.stderr
