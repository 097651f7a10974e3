"""Output dims derived from dynamic dims, and dims with a smallest size, end to end.

The example conv plugin is the subject: its output length follows from its input
length, and it has no output below ``dilation * (kernel_size - 1) + 1 - 2 * padding``.
"""

from __future__ import annotations

import json

import onnx

from hostile import assert_refused, assert_succeeded


def test_the_grid_starts_at_the_smallest_length_and_the_file_names_the_derived_dim(
    cli, tmp_path
) -> None:
    path = tmp_path / "conv1d.onnx"
    result = cli("export", "conv1d", "-p", "kernel_size=5", "-p", "stride=2", "-o", str(path))
    assert_succeeded(result)
    assert "length [5, 32, 71]" in result.stdout
    output = onnx.load(path).graph.output[0].type.tensor_type.shape.dim
    assert output[2].dim_param == "(length + 2 * 0 - 1 * (5 - 1) - 1) // 2 + 1"
    record = json.loads(cli("inspect", str(path), "--json").stdout)["layerport"]
    assert record["min_dims"] == {"length": 5}


def test_a_length_below_the_smallest_is_refused_by_run_and_infer(cli, tmp_path) -> None:
    assert_refused(
        cli("run", "conv1d", "--dim", "length=2"),
        2,
        "Error: dim length of layer 'conv1d' must be at least 3, got 2 (its smallest size is "
        "dilation * (kernel_size - 1) + 1 - 2 * padding, with dilation=1, kernel_size=3, "
        "padding=0); set it with --dim length=3",
    )
    path = tmp_path / "conv1d.onnx"
    assert_succeeded(cli("export", "conv1d", "-o", str(path), "--trials", "1"))
    assert_refused(
        cli("infer", str(path), "--dim", "length=2"),
        2,
        "dim length is 2 in input x, but must be at least 3",
    )
    assert_succeeded(cli("infer", str(path), "--dim", "length=3"))


def test_padding_lowers_the_smallest_length(cli) -> None:
    result = cli("run", "conv1d", "-p", "padding=1", "--dim", "length=1", "--json")
    assert_succeeded(result)
    assert json.loads(result.stdout)["outputs"]["y"]["shape"] == [4, 6, 1]


def test_channels_that_groups_do_not_divide_are_refused(cli) -> None:
    assert_refused(
        cli("run", "conv1d", "-p", "groups=4", "-p", "in_channels=6"),
        2,
        "in_channels=6 is not divisible by groups=4",
    )


def test_a_pinned_derived_dim_fails_verification(cli, tmp_path) -> None:
    path = tmp_path / "conv1d.onnx"
    assert_succeeded(cli("export", "conv1d", "-o", str(path), "--no-verify"))
    model = onnx.load(path)
    model.graph.output[0].type.tensor_type.shape.dim[2].dim_value = 30
    onnx.save(model, path)
    assert_refused(
        cli("verify", str(path)),
        1,
        "derived dim (length + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1 "
        "of y is pinned to 30 in the file",
    )
