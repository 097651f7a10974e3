"""The read-and-run half of the CLI: list, show, plugins, run, and the error contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import SpecPlugin, run_process, tiny_spec


def test_list_shows_builtins(cli) -> None:
    result = cli("list")
    assert result.exit_code == 0, result.stderr
    assert "linear" in result.stdout and "rnn" in result.stdout
    assert result.stderr == ""


def test_list_json(cli) -> None:
    rows = json.loads(cli("list", "--json").stdout)
    by_name = {row["name"]: row for row in rows}
    assert by_name["rnn"]["plugin"] == "layerport"
    assert by_name["rnn"]["qualified_name"] == "layerport:rnn"
    assert by_name["linear"]["description"].startswith("Fully connected")


def test_list_shows_both_sides_of_a_clash(cli, register_plugin) -> None:
    register_plugin(SpecPlugin(tiny_spec()), "plugin-a")
    register_plugin(SpecPlugin(tiny_spec()), "plugin-b")
    result = cli("list")
    assert "plugin-a:tiny" in result.stdout and "plugin-b:tiny" in result.stdout
    clash = cli("run", "tiny")
    assert clash.exit_code == 2
    assert "registered by both plugin-a and plugin-b" in clash.stderr
    assert cli("run", "plugin-b:tiny").exit_code == 0


def test_show_json_describes_weights_for_the_configuration(cli) -> None:
    result = cli("show", "rnn", "-p", "hidden_size=32", "-p", "bias=false", "--json")
    assert result.exit_code == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["plugin"]["name"] == "layerport"
    assert {w["name"]: w["shape"] for w in shown["weights"]} == {
        "wi.weight": [32, 128],
        "wh.weight": [32, 32],
        "wo.weight": [16, 32],
    }
    x = next(tensor for tensor in shown["inputs"] if tensor["name"] == "x")
    assert [(d["name"], d["dynamic"]) for d in x["dims"]] == [
        ("batch", True),
        ("seq", True),
        ("input_size", False),
    ]
    h0 = next(tensor for tensor in shown["inputs"] if tensor["name"] == "h0")
    assert h0["optional"] is True
    params = {param["name"]: param for param in shown["params"]}
    assert params["nonlinearity"]["allowed"] == "one of tanh, relu"
    assert params["hidden_size"]["value"] == 32 and params["hidden_size"]["default"] == 64


def test_show_table(cli) -> None:
    result = cli("show", "linear")
    assert result.exit_code == 0
    for text in ("in_features", "activation", "batch*", "weight", "Parameters"):
        assert text in result.stdout


def test_plugins_lists_builtins_with_their_layers(cli) -> None:
    data = json.loads(cli("plugins", "--json").stdout)
    builtin = next(row for row in data["plugins"] if row["name"] == "layerport")
    assert builtin["layers"] == ["linear", "rnn"]
    assert builtin["status"] == "ok"


def test_run_linear_prints_a_16_by_2_output(cli) -> None:
    result = cli("run", "linear", "--json")
    assert result.exit_code == 0, result.stderr
    outputs = json.loads(result.stdout)["outputs"]
    assert outputs["y"]["shape"] == [16, 2]
    assert outputs["y"]["dtype"] == "float32"


def test_run_rnn_prints_both_outputs(cli) -> None:
    result = cli("run", "rnn")
    assert result.exit_code == 0, result.stderr
    assert "8 x 32 x 16" in result.stdout and "8 x 64" in result.stdout


def test_run_sigmoid_outputs_are_probabilities(cli) -> None:
    outputs = json.loads(cli("run", "linear", "-p", "activation=sigmoid", "--json").stdout)[
        "outputs"
    ]
    assert 0 < outputs["y"]["min"] <= outputs["y"]["max"] < 1


def test_run_saves_outputs_and_reads_inputs(cli, tmp_path) -> None:
    x = np.random.default_rng(3).standard_normal((3, 7, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    result = cli("run", "rnn", "--input", f"x={tmp_path / 'x.npy'}", "--output", str(out))
    assert result.exit_code == 0, result.stderr
    with np.load(out) as saved:
        assert saved["y"].shape == (3, 7, 16)
        assert saved["h_n"].shape == (3, 64)
    # An explicit h0 of zeros is the same as leaving it out.
    np.savez(tmp_path / "both.npz", x=x, h0=np.zeros((3, 64), np.float32))
    out2 = tmp_path / "out2.npz"
    assert (
        cli("run", "rnn", "--input", str(tmp_path / "both.npz"), "--output", str(out2)).exit_code
        == 0
    )
    with np.load(out) as first, np.load(out2) as second:
        np.testing.assert_array_equal(first["y"], second["y"])


def test_run_float64(cli) -> None:
    outputs = json.loads(cli("run", "rnn", "--dtype", "float64", "--json").stdout)["outputs"]
    assert outputs["y"]["dtype"] == "float64"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "lnear"], "Error: unknown layer 'lnear' (did you mean 'linear'?)"),
        (
            ["run", "linear", "-p", "in_features=-3"],
            "Error: parameter in_features must be an integer >= 1, got -3",
        ),
        (
            ["run", "linear", "-p", "nosuch=1"],
            "Error: unknown parameter 'nosuch' for layer 'linear'",
        ),
        (["run", "linear", "-p", "in_features"], "Error: -p expects KEY=VALUE, got 'in_features'"),
        (["run", "linear", "-p", "bias=2"], "Error: parameter bias must be true or false, got '2'"),
        (
            ["run", "linear", "-p", "activation=gelu"],
            "Error: parameter activation must be one of none",
        ),
        (["run", "linear", "--dim", "seq=3"], "Error: unknown dim 'seq' for layer 'linear'"),
        (["run", "linear", "--dim", "batch=0"], "Error: dim batch must be an integer >= 1, got 0"),
        (
            ["run", "linear", "--dim", "batch=x"],
            "Error: dim batch must be an integer >= 1, got 'x'",
        ),
        (
            ["run", "rnn", "--dim", "hidden_size=3"],
            "Error: dim 'hidden_size' of layer 'rnn' is fixed",
        ),
        (["run", "linear", "--dtype", "float8"], "Error: Invalid value for '--dtype'"),
        (["run", "linear", "--seed", "-1"], "Error: Invalid value for '--seed'"),
        (["run"], "Error: Missing argument 'LAYER'"),
        (["nosuchcommand"], "Error: No such command 'nosuchcommand'"),
        (["run", "linear", "--bogus"], "Error: No such option '--bogus'"),
        (["show", "nosuch"], "Error: unknown layer 'nosuch'"),
    ],
)
def test_bad_input_exits_2_with_one_line(cli, args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2, result
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_every_command_has_an_example_in_its_help(cli) -> None:
    from layerport.cli import cli as group

    for name in group.list_commands(None):  # type: ignore[arg-type]
        result = cli(name, "--help")
        assert result.exit_code == 0
        assert "Example" in result.stdout, name
        assert cli(name, "-h").stdout == result.stdout


def test_no_traceback_and_debug_shows_one() -> None:
    plain = run_process("run", "linear", "-p", "in_features=-3")
    assert plain.exit_code == 2
    assert plain.stderr == "Error: parameter in_features must be an integer >= 1, got -3\n"
    debug = run_process("run", "linear", "-p", "in_features=-3", "--debug")
    assert "Traceback" in debug.stderr and "InvalidParameter" in debug.stderr
    env_debug = run_process("run", "linear", "-p", "in_features=-3", env={"LAYERPORT_DEBUG": "1"})
    assert "Traceback" in env_debug.stderr


def test_console_script_and_module_agree() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "layerport"
    completed = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert completed.stdout == run_process("--version").stdout
    assert "layerport" in completed.stdout


def test_bare_layerport_prints_help_and_exits_0(cli) -> None:
    result = cli()
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: layerport")
    assert "Commands:" in result.stdout


def _broken_builder(params):  # type: ignore[no-untyped-def]
    raise ValueError("the builder is broken")


def test_a_layers_own_exception_fails_that_layer_only(cli, register_plugin, tmp_path) -> None:
    from dataclasses import replace

    register_plugin(SpecPlugin(replace(tiny_spec("shaky"), build=_broken_builder)), "shaky-plugin")
    single = cli("run", "shaky")
    assert single.exit_code == 1
    assert single.stderr == (
        "Error: layer shaky (plugin shaky-plugin): build() raised ValueError: the builder is broken\n"
    )
    every = cli("export", "--all", "-o", str(tmp_path), "--trials", "1")
    assert every.exit_code == 1
    assert "1 of" in every.stderr and "shaky-plugin:shaky: layer shaky" in every.stderr
    # The table still shows every layer (its cell may wrap, with more layers installed).
    assert "failed: layer shaky" in " ".join(every.stdout.split())
    assert (tmp_path / "rnn.onnx").is_file() and (tmp_path / "linear.onnx").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--report", "r.md"], "Error: --report applies to verification; drop it or --no-verify"),
        (["--atol", "0.1"], "Error: --atol applies to verification"),
        (["--trials", "2"], "Error: --trials applies to verification"),
    ],
)
def test_no_verify_refuses_verification_options(cli, args, message) -> None:
    result = cli("export", "linear", "--no-verify", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith(message)


def test_exported_being_a_file_is_a_clean_error(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exported").write_text("not a folder")
    result = cli("export", "linear")
    assert result.exit_code == 2
    assert result.stderr == "Error: exported is not a folder; exports are written into a folder\n"


def test_verify_treats_a_bare_name_as_a_layer_even_beside_a_file(
    cli, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "linear").write_text("a stray file")
    assert cli("verify", "linear", "--trials", "1").exit_code == 0


def test_inspect_shows_the_file(cli, tmp_path) -> None:
    target = tmp_path / "linear.onnx"
    assert cli("export", "linear", "-o", str(target)).exit_code == 0
    text = cli("inspect", str(target)).stdout
    for expected in (
        "opsets:     ai.onnx 18",
        "nodes:      1: Gemm 1",
        "x",
        "batch* x 8",
        "qualified_name",
    ):
        assert expected in text, expected
    described = json.loads(cli("inspect", str(target), "--json").stdout)
    assert described["layerport"]["layer"] == "linear"
    assert described["layerport"]["dynamic_dims"] == {"batch": 16}
    assert described["inputs"][0]["dims"][0] == {"name": "batch", "symbolic": True}


@pytest.mark.parametrize(
    ("args", "exit_code"),
    [(["run", "linear", "-p", "in_features=0"], 2), (["run", "linear", "--bogus"], 2)],
)
def test_debug_keeps_the_exit_code(args: list[str], exit_code: int) -> None:
    result = run_process(*args, "--debug")
    assert result.exit_code == exit_code
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: ")


def test_verify_a_file_that_is_not_onnx(cli, tmp_path) -> None:
    np.savez(tmp_path / "outputs.npz", y=np.zeros(2))
    result = cli("verify", str(tmp_path / "outputs.npz"))
    assert result.exit_code == 2
    assert "is not an ONNX model" in result.stderr


def _squeezing_builder(params):  # type: ignore[no-untyped-def]
    from torch import nn

    class Squeezes(nn.Linear):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return super().forward(x)[:1]  # one row, whatever the batch

    return Squeezes(int(params["width"]), 3)


def test_outputs_that_contradict_the_spec_fail_run_and_export(
    cli, register_plugin, tmp_path
) -> None:
    from dataclasses import replace

    register_plugin(SpecPlugin(replace(tiny_spec("squeezy"), build=_squeezing_builder)), "squeezy")
    message = (
        "Error: layer squeezy: forward() returned y of shape (1, 3), but the spec declares "
        "(batch, 3) = (4, 3)\n"
    )
    ran = cli("run", "squeezy", "--dim", "batch=4")
    assert ran.exit_code == 1 and ran.stderr == message
    exported = cli("export", "squeezy", "--dim", "batch=4", "-o", str(tmp_path / "s.onnx"))
    assert exported.exit_code == 1 and exported.stderr == message  # not "torch.onnx pinned"


def test_export_all_says_which_layers_failed_in_progress_and_one_short_line(
    cli, register_plugin, tmp_path
) -> None:
    from dataclasses import replace

    register_plugin(SpecPlugin(replace(tiny_spec("shaky"), build=_broken_builder)), "shaky-plugin")
    every = cli("export", "--all", "-o", str(tmp_path / "new" / "folder"), "--trials", "1")
    assert every.exit_code == 1
    assert "shaky failed after" in every.stderr and "shaky finished" not in every.stderr
    assert "rnn finished in" in every.stderr
    error = every.stderr.splitlines()[-1]
    assert error.endswith("(the table above has each error)") and len(error) < 300
    assert (tmp_path / "new" / "folder" / "rnn.onnx").is_file()  # -o DIR is created
