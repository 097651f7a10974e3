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

from layerport.plugin import CHECKS, build_layer, get_registry, load_model, resolve_config
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


def _assert_matches(session, oracle: torch.nn.Module, shape: tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    """The file's output for a random ``x`` of ``shape`` is the oracle's, shape and values."""
    x = np.random.default_rng(shape[-1]).standard_normal(shape).astype(np.float32)
    y = session.run({"x": x})["y"]
    with torch.no_grad():
        expected = oracle(torch.from_numpy(x)).numpy()
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, atol=1e-5)


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
        _assert_matches(session, oracle, (batch, 4, length))
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


CONV2D_CASES = [
    # A rectangular kernel, a stride and a dilation on one axis, padding on the other.
    ({"kernel_height": 1, "kernel_width": 5, "stride_height": 2, "dilation_height": 2,
      "padding_width": 2}, (1, 5), (2, 1), (0, 2), (2, 1), 1),
    # Shared values with one axis overridden, and groups.
    ({"kernel_size": 3, "stride": 2, "padding": 1, "kernel_width": 2, "dilation_width": 3,
      "groups": 2}, (3, 2), (2, 2), (1, 1), (1, 3), 2),
]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "kernel", "stride", "padding", "dilation", "groups"),
    CONV2D_CASES,
    ids=["rectangular", "grouped"],
)
def test_conv2d_matches_nn_conv2d_per_axis_at_untraced_sizes(
    tmp_path, params, kernel, stride, padding, dilation, groups
) -> None:
    oracle = torch.nn.Conv2d(4, 6, kernel, stride, padding, dilation, groups=groups).eval()
    checkpoint = tmp_path / "conv2d.pt"
    torch.save(oracle.state_dict(), checkpoint)
    # The checkpoint tells both channel counts and the kernel; -p only what it cannot.
    flags = [
        word
        for name, value in params.items()
        if not name.startswith("kernel")
        for word in ("-p", f"{name}={value}")
    ]
    path = tmp_path / "conv2d.onnx"
    result = _cli(
        "export", "conv2d", "--weights", str(checkpoint), *flags, "-o", str(path), "--trials", "1"
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads(_cli("inspect", str(path), "--json").output)["layerport"]["params"]
    assert (recorded["in_channels"], recorded["out_channels"]) == (4, 6)
    assert (recorded["kernel_height"], recorded["kernel_width"]) == kernel
    session = load_model(path)
    for batch, height, width in ((3, 17, 9), (1, 30, 41)):  # traced at (2, 12, 10)
        _assert_matches(session, oracle, (batch, 4, height, width))
    # Both output dims symbolic, named by their formulas with this layer's values.
    output = onnx.load(path).graph.output[0].type.tensor_type.shape.dim
    height_formula = (
        f"(height + 2 * {padding[0]} - {dilation[0]} * ({kernel[0]} - 1) - 1) // {stride[0]} + 1"
    )
    assert output[2].dim_param == height_formula
    assert output[3].dim_param.startswith(f"(width + 2 * {padding[1]} - {dilation[1]} * ")


def test_conv2d_keeps_kernel_size_for_a_square_kernel(tmp_path) -> None:
    module = build_layer("conv2d", {"kernel_size": 5, "stride": 2})
    assert module.kernel_size == (5, 5) and module.stride == (2, 2)
    oracle = torch.nn.Conv2d(4, 8, 5)
    checkpoint = tmp_path / "square.pt"
    torch.save({"features.0." + key: value for key, value in oracle.state_dict().items()},
               checkpoint)  # fmt: skip
    config = resolve_config(
        get_registry(), "conv2d", weights=checkpoint, weights_prefix="features.0."
    )
    assert config.params["kernel_size"] == 5 and config.params["out_channels"] == 8
    refused = _run("run", "conv2d", "--weights", str(checkpoint), "-p", "kernel_size=3",
                   "--weights-prefix", "features.0.")  # fmt: skip
    assert refused.returncode == 2
    assert "parameter kernel_size is 3, but the weights in " in refused.stderr
    assert "imply kernel_size=5; drop it, and the weights set it" in refused.stderr


def test_a_grouped_checkpoint_takes_its_groups_from_the_user(tmp_path) -> None:
    checkpoint = tmp_path / "depthwise.pt"
    torch.save(torch.nn.Conv2d(6, 6, 3, groups=6).state_dict(), checkpoint)
    config = resolve_config(get_registry(), "conv2d", params={"groups": "6"}, weights=checkpoint)
    assert (config.params["in_channels"], config.params["groups"]) == (6, 6)
    # Read alone (as layerport draft reads a group of tensors), the weight is ungrouped.
    spec = get_registry().resolve("conv2d").spec
    assert spec.params_from_weights is not None
    alone = spec.params_from_weights({"weight": (6, 1, 3, 3), "bias": (6,)})
    assert (alone["in_channels"], alone["kernel_size"]) == (1, 3)
    one_d = tmp_path / "conv1d.pt"
    torch.save(torch.nn.Conv1d(5, 4, 7, bias=False).state_dict(), one_d)
    config = resolve_config(get_registry(), "conv1d", weights=one_d)
    assert {name: config.params[name] for name in ("in_channels", "out_channels")} == {
        "in_channels": 5,
        "out_channels": 4,
    }
    assert (config.params["kernel_size"], config.params["bias"]) == (7, False)
    # groups=4 divides no count the weight allows: refused, naming the channels.
    refused = _run("run", "conv2d", "--weights", str(checkpoint), "-p", "groups=4")
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("out_channels=6 is not divisible by groups=4")
    assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("kernel_width=-1", "parameter kernel_width must be an integer >= 0, got -1"),
        ("stride_height=x", "parameter stride_height must be an integer >= 0, got 'x'"),
    ],
)
def test_bad_per_axis_settings_are_refused(flag: str, message: str) -> None:
    result = _run("run", "conv2d", "-p", flag)
    assert result.returncode == 2
    assert result.stderr == f"Error: {message}\n"


def test_a_height_below_its_axis_smallest_is_refused() -> None:
    result = _run("run", "conv2d", "-p", "kernel_height=5", "--dim", "height=4")
    assert result.returncode == 2
    assert "dim height of layer 'conv2d' must be at least 5, got 4" in result.stderr
    assert _run("run", "conv2d", "-p", "kernel_height=5", "--dim", "height=5").returncode == 0


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
