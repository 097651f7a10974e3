"""Hostile parameters and dims: each refused with exit 2 and one line, before anything is built."""

from __future__ import annotations

import pytest

from hostile import BUILTINS_ONLY, assert_refused, assert_succeeded, save_gemm_model

from conftest import run_process


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(
            ["run", "rnn", "-p", "hiden_size=3"],
            ["unknown parameter 'hiden_size'", "did you mean 'hidden_size'?"],
            id="unknown-parameter",
        ),
        pytest.param(
            ["run", "linear", "-p", "in_features=2.5"],
            ["parameter in_features must be an integer >= 1, got '2.5'"],
            id="wrong-type",
        ),
        pytest.param(
            ["run", "linear", "-p", "in_features=0"],
            ["parameter in_features must be an integer >= 1, got 0"],
            id="zero-size",
        ),
        pytest.param(
            ["run", "rnn", "-p", "hidden_size=-4"],
            ["parameter hidden_size must be an integer >= 1, got -4"],
            id="negative-size",
        ),
        pytest.param(
            ["run", "linear", "-p", "out_features=two"],
            ["parameter out_features must be an integer >= 1, got 'two'"],
            id="not-a-number",
        ),
        pytest.param(
            ["run", "linear", "-p", "bias=maybe"],
            ["parameter bias must be true or false, got 'maybe'"],
            id="not-a-bool",
        ),
        pytest.param(
            ["run", "rnn", "-p", "nonlinearity=gelu"],
            ["parameter nonlinearity must be one of tanh, relu, got gelu"],
            id="choice-not-in-list",
        ),
        pytest.param(
            ["run", "rnn", "--dim", "time=3"],
            ["unknown dim 'time' for layer 'rnn'", "dynamic dims: batch, seq"],
            id="unknown-dim",
        ),
        pytest.param(
            ["run", "rnn", "--dim", "input_size=3"],
            ["dim 'input_size' of layer 'rnn' is fixed by a parameter", "-p input_size=SIZE"],
            id="dim-for-a-fixed-axis",
        ),
        pytest.param(
            ["run", "rnn", "--dim", "seq=0"],
            ["dim seq must be an integer >= 1, got 0"],
            id="zero-dim",
        ),
        pytest.param(
            ["run", "rnn", "--dim", "seq=-2"],
            ["dim seq must be an integer >= 1, got -2"],
            id="negative-dim",
        ),
        pytest.param(
            ["run", "rnn", "--dim", "seq=many"],
            ["dim seq must be an integer >= 1, got 'many'"],
            id="non-number-dim",
        ),
    ],
)
def test_bad_parameter_or_dim_exits_2(cli, args: list[str], words: list[str]) -> None:
    result = cli(*args)
    assert_refused(result, 2, *words)
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["run", "linear", "-p", "in_features=1000000000"], id="huge-parameter"),
        pytest.param(["run", "linear", "--dim", "batch=1000000000"], id="huge-dim"),
        pytest.param(["export", "rnn", "-p", "hidden_size=1000000"], id="huge-export"),
        pytest.param(["run", "linear", "-p", "in_features=1" + "0" * 400], id="absurd-parameter"),
    ],
)
def test_size_that_would_exhaust_memory_is_refused_before_allocating(cli, args: list[str]) -> None:
    assert_refused(cli(*args), 2, "over the 4.0 GiB limit", "LAYERPORT_MAX_MEMORY=SIZE")


def test_infer_refuses_a_huge_dim_before_drawing_inputs(cli, tmp_path) -> None:
    model = save_gemm_model(tmp_path / "gemm.onnx")
    result = cli("infer", str(model), "--dim", "n=1000000000")
    assert_refused(result, 2, "generating the inputs needs about", "LAYERPORT_MAX_MEMORY")
    assert_refused(cli("infer", str(model), "--dim", "n=-3"), 2, "dim n must be an integer >= 1")


def test_raising_the_memory_limit_changes_the_verdict() -> None:
    args = ("run", "linear", "--dim", "batch=2000")
    refused = run_process(*args, env={**BUILTINS_ONLY, "LAYERPORT_MAX_MEMORY": "64K"})
    assert_refused(refused, 2, "over the 64.0 KiB limit", "LAYERPORT_MAX_MEMORY=SIZE")
    allowed = run_process(*args, env={**BUILTINS_ONLY, "LAYERPORT_MAX_MEMORY": "1M"})
    assert_succeeded(allowed)
    assert "2000 x 2" in allowed.stdout


@pytest.mark.parametrize("value", ["lots", "-1", "0", "0.5", "1e999", "", "G"])
def test_bad_memory_limit_value_is_a_clean_error(cli, monkeypatch, value: str) -> None:
    monkeypatch.setenv("LAYERPORT_MAX_MEMORY", value)
    assert_refused(
        cli("run", "linear"),
        2,
        "LAYERPORT_MAX_MEMORY must be a size such as 8G or 512M",
        f"got {value!r}",
    )


def test_bad_memory_limit_value_in_a_fresh_process() -> None:
    result = run_process("run", "linear", env={**BUILTINS_ONLY, "LAYERPORT_MAX_MEMORY": "plenty"})
    assert result.stderr == (
        "Error: LAYERPORT_MAX_MEMORY must be a size such as 8G or 512M, got 'plenty'\n"
    )
    assert result.exit_code == 2


def test_a_choice_typo_suggests_the_choice(cli) -> None:
    result = cli("run", "linear", "-p", "activation=sigmod")
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: parameter activation must be one of none, sigmoid, tanh, relu, got sigmod "
        "(did you mean 'sigmoid'?)\n"
    )


def test_a_dim_without_a_size_says_name_equals_size(cli) -> None:
    result = cli("run", "linear", "--dim", "batch")
    assert result.exit_code == 2
    assert result.stderr == "Error: --dim expects NAME=SIZE, got 'batch'\n"
