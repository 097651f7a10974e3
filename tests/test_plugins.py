"""Plugin discovery, selection and isolation, with real distributions on a fresh sys.path.

Each test builds fake installed distributions (a ``.dist-info`` folder with an
entry point, and the module it names) in a temporary folder, then runs layerport
in a subprocess with that folder on ``PYTHONPATH``: the same discovery path as a
``pip install``.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pluggy
import pytest

from layerport import hookimpl, hookspecs, plugins
from layerport.registry import PluginInfo

from conftest import Result, run_process

GOOD_PLUGIN = """
from layerport import Dim, LayerSpec, Param, Tensor, hookimpl


def build(params):
    from torch import nn

    return nn.Linear(int(params["width"]), 2)


SPEC = LayerSpec(
    name="{layer}",
    description="A fake plugin layer.",
    build=build,
    weights=lambda params: {{"weight": (2, int(params["width"])), "bias": (2,)}},
    params=(Param("width", int, 3, "input width", minimum=1),),
    dims=(Dim("batch", 4),),
    inputs=(Tensor("x", ("batch", "width")),),
    outputs=(Tensor("y", ("batch", "2")),),
)


@hookimpl
def register_layers(register):
    register(SPEC)
"""

BROKEN = {
    "import-error": "import layerport_no_such_module_anywhere\n",
    "hook-raises": (
        "from layerport import hookimpl\n\n@hookimpl\n"
        "def register_layers(register):\n    raise RuntimeError('the hook blew up')\n"
    ),
    "invalid-spec": (
        "from layerport import LayerSpec, Tensor, hookimpl\n\n@hookimpl\n"
        "def register_layers(register):\n"
        "    register(LayerSpec(name='Bad Name', description='x', build=print, weights=dict,\n"
        "                       inputs=(Tensor('x', ('1',)),), outputs=(Tensor('y', ('1',)),)))\n"
    ),
    "wrong-arguments": (
        "from layerport import hookimpl\n\n@hookimpl\ndef register_layers(registrar):\n    pass\n"
    ),
    "misspelled-hook": (
        "from layerport import hookimpl\n\n@hookimpl\ndef register_layer(register):\n    pass\n"
    ),
}
BROKEN_MESSAGES = {
    "import-error": "No module named 'layerport_no_such_module_anywhere'",
    "hook-raises": "its register_layers hook raised: RuntimeError: the hook blew up",
    "invalid-spec": "name must be lowercase letters",
    "wrong-arguments": "registrar",
    "misspelled-hook": "unknown hook 'register_layer'",
}


def make_distribution(site: Path, name: str, source: str, entry_name: str | None = None) -> None:
    """Install a fake distribution ``name`` whose ``layerport`` entry point is a module."""
    module = name.replace("-", "_")
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{module}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[layerport]\n{entry_name or module} = {module}\n")


def layerport(site: Path, *args: str, **env: str) -> Result:
    pythonpath = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return run_process(*args, env={"PYTHONPATH": pythonpath, **env})


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    return folder


def test_an_installed_plugin_is_listed_shown_and_run(site: Path) -> None:
    make_distribution(site, "layerport-fake", GOOD_PLUGIN.format(layer="fake"))
    listed = json.loads(layerport(site, "list", "--json").stdout)
    fake = next(row for row in listed if row["name"] == "fake")
    assert fake["plugin"] == "layerport-fake" and fake["version"] == "1.2.3"
    shown = json.loads(layerport(site, "show", "fake", "--json").stdout)
    assert shown["plugin"] == {"name": "layerport-fake", "version": "1.2.3"}
    ran = layerport(site, "run", "layerport-fake:fake", "--json")
    assert ran.exit_code == 0, ran.stderr
    assert json.loads(ran.stdout)["outputs"]["y"]["shape"] == [4, 2]


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_is_reported_once_and_isolated(site: Path, case: str) -> None:
    name = f"layerport-{case}"
    make_distribution(site, name, BROKEN[case])
    make_distribution(site, "layerport-fake", GOOD_PLUGIN.format(layer="fake"))
    listed = layerport(site, "list")
    assert listed.exit_code == 0
    warnings = listed.stderr.splitlines()
    assert len(warnings) == 1, listed.stderr
    assert warnings[0].startswith(f"Warning: plugin {name} is disabled: ")
    assert BROKEN_MESSAGES[case] in warnings[0]
    assert "Traceback" not in listed.stderr
    assert "fake" in listed.stdout and "linear" in listed.stdout
    assert layerport(site, "run", "fake").exit_code == 0
    assert layerport(site, "run", "linear").exit_code == 0
    plugins = json.loads(layerport(site, "plugins", "--json").stdout)["plugins"]
    failed = next(row for row in plugins if row["name"] == name)
    assert failed["status"] == "failed" and BROKEN_MESSAGES[case] in failed["error"]


@pytest.mark.parametrize("case", ["import-error", "hook-raises"])
def test_debug_reraises_a_broken_plugins_error(site: Path, case: str) -> None:
    make_distribution(site, f"layerport-{case}", BROKEN[case])
    result = layerport(site, "list", "--debug")
    assert result.exit_code != 0
    assert "Traceback" in result.stderr


def test_asking_for_a_failed_plugins_layer_says_why(site: Path) -> None:
    make_distribution(site, "layerport-gru", BROKEN["import-error"], entry_name="gru")
    result = layerport(site, "run", "gru")
    assert result.exit_code == 2
    error = result.stderr.splitlines()[-1]
    assert error.startswith(
        "Error: unknown layer 'gru'; plugin layerport-gru, which may provide it, failed"
    )
    assert "No module named" in error


def test_load_plugins_selects_by_distribution_name(site: Path) -> None:
    make_distribution(site, "layerport-one", GOOD_PLUGIN.format(layer="one"))
    make_distribution(site, "layerport-two", GOOD_PLUGIN.format(layer="two"))

    def names(selection: str | None) -> tuple[set[str], str]:
        env = {} if selection is None else {"LAYERPORT_LOAD_PLUGINS": selection}
        result = layerport(site, "list", "--json", **env)
        return {row["name"] for row in json.loads(result.stdout)}, result.stderr

    assert names(None)[0] >= {"linear", "rnn", "one", "two"}
    assert names("")[0] == {"linear", "rnn"}
    assert names("layerport-two")[0] == {"linear", "rnn", "two"}
    assert names("LAYERPORT_ONE, layerport-two")[0] == {"linear", "rnn", "one", "two"}
    selected, stderr = names("layerport-three")
    assert selected == {"linear", "rnn"}
    assert stderr == (
        "Warning: LAYERPORT_LOAD_PLUGINS names 'layerport-three', which is not an installed plugin\n"
    )


def test_name_clash_between_plugins_needs_a_qualified_name(site: Path) -> None:
    make_distribution(site, "layerport-a", GOOD_PLUGIN.format(layer="dup"))
    make_distribution(site, "layerport-b", GOOD_PLUGIN.format(layer="dup"))
    listed = layerport(site, "list")
    assert "layerport-a:dup" in listed.stdout and "layerport-b:dup" in listed.stdout
    bare = layerport(site, "run", "dup")
    assert bare.exit_code == 2
    assert bare.stderr == (
        "Error: layer 'dup' is registered by both layerport-a and layerport-b; "
        "choose one with layerport-a:dup or layerport-b:dup\n"
    )
    for qualified in ("layerport-a:dup", "layerport-b:dup"):
        for command in (["run"], ["show"], ["verify", "--trials", "1"]):
            result = layerport(site, *command, qualified)
            assert result.exit_code == 0, (command, result.stderr)


def test_register_commands_adds_a_subcommand(site: Path) -> None:
    make_distribution(
        site,
        "layerport-hello",
        """
        import click
        from layerport import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            @click.argument("name")
            def hello(name):
                '''Say hello.

                Example: layerport hello world
                '''
                click.echo(f"hello {name}")
        """,
    )
    assert layerport(site, "hello", "world").stdout == "hello world\n"
    assert "hello" in layerport(site, "--help").stdout


def test_every_hook_has_a_test_here() -> None:
    # In the style of datasette's test_plugin_hooks_have_tests: a test_hook_<name>
    # function must exist, which a mention of the hook's name cannot fake.
    tests = {name for name, value in globals().items() if callable(value)}
    for name in _hook_names():
        assert f"test_hook_{name}" in tests, f"hook {name} has no test_hook_{name}"


def test_hook_register_layers(site: Path) -> None:
    make_distribution(site, "layerport-hooked", GOOD_PLUGIN.format(layer="hooked"))
    listed = layerport(site, "list", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert {"name": "hooked", "plugin": "layerport-hooked"}.items() <= next(
        row for row in json.loads(listed.stdout) if row["name"] == "hooked"
    ).items()


def test_hook_register_commands(site: Path) -> None:
    make_distribution(
        site,
        "layerport-greeter",
        "import click\nfrom layerport import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n"
        "    @cli.command()\n    def greet():\n        click.echo('greetings')\n",
    )
    assert layerport(site, "greet").stdout == "greetings\n"


TARGET_PLUGIN = """
from layerport import Param, hookimpl
from layerport.runtime.files import atomic_write_bytes, check_writable_target
from layerport.targets import ExportTarget


def write(result, output, options):
    atomic_write_bytes(output, result.model_bytes)
    output.with_suffix(".txt").write_text(options["note"] + " " + result.record.layer)
    return output


@hookimpl
def register_export_targets(register):
    register(ExportTarget(
        name="noted",
        description="An .onnx file with a note.",
        output_in=lambda folder, stem: folder / f"{stem}.onnx",
        check=lambda output, options: check_writable_target(output),
        write=write,
        options=(Param("note", str, "hello", "the note"),),
    ))
"""


def test_hook_register_export_targets(site: Path) -> None:
    make_distribution(site, "layerport-noted", TARGET_PLUGIN)
    targets = layerport(site, "targets", "--json")
    assert targets.exit_code == 0, targets.stderr
    assert sorted(row["name"] for row in json.loads(targets.stdout)) == ["noted", "onnx"]
    out = site / "linear.onnx"
    exported = layerport(
        site, "export", "linear", "--target", "noted", "--target-option", "note=hi", "-o", str(out)
    )
    assert exported.exit_code == 0, exported.stderr
    assert out.is_file() and out.with_suffix(".txt").read_text() == "hi linear"
    unknown = layerport(site, "export", "linear", "--target", "nope", "-o", str(out))
    assert unknown.exit_code == 2
    assert unknown.stderr == "Error: unknown export target 'nope'; targets: noted, onnx\n"
    bad_option = layerport(
        site, "export", "linear", "--target", "noted", "--target-option", "colour=red"
    )
    assert bad_option.exit_code == 2
    assert "unknown option 'colour' for export target 'noted'; options: note" in bad_option.stderr


def test_every_hook_is_documented_in_the_readme() -> None:
    # In the style of datasette's test_plugin_hooks_are_documented.
    import inspect

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in _hook_names():
        arguments = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"### {name}({arguments})" in readme, f"hook {name}({arguments}) is not documented"


def _hook_names() -> list[str]:
    return [name for name in dir(hookspecs) if hasattr(getattr(hookspecs, name), "layerport_spec")]


class _MisspelledHook:
    @hookimpl
    def register_layer(self, register):  # type: ignore[no-untyped-def]
        pass


class _NoLayers:
    @hookimpl
    def register_layers(self, register):  # type: ignore[no-untyped-def]
        pass


def test_a_misspelled_hook_lists_every_hook_and_leaves_no_plugin_info() -> None:
    info = PluginInfo("layerport-misspelled", "1.0")
    with pytest.raises(pluggy.PluginValidationError) as error:
        plugins.register_plugin(_MisspelledHook(), "layerport-misspelled:main", info)
    assert str(error.value).endswith(
        "; hooks: register_layers, register_commands, register_export_targets"
    )
    assert sorted(plugins.HOOK_NAMES) == _hook_names()
    assert plugins.pm.get_plugin("layerport-misspelled:main") is None
    assert "layerport-misspelled" not in {info.name for info in plugins.loaded_plugins()}


def test_plugin_info_is_kept_by_registration_name() -> None:
    plugin = _NoLayers()
    info = PluginInfo("layerport-quiet", "2.0")
    plugins.register_plugin(plugin, "layerport-quiet:main", info)
    try:
        assert plugins.plugin_info(plugin) == info
    finally:
        plugins.unregister_plugin(plugin)
    assert plugins.plugin_info(_NoLayers()).version == "unknown"
