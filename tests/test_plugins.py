"""Plugin discovery, selection and isolation, with real distributions on a fresh sys.path.

Each test builds fake installed distributions (a ``.dist-info`` folder with an
entry point, and the module it names) in a temporary folder, then runs layerport
in a subprocess with that folder on ``PYTHONPATH``: the same discovery path as a
``pip install``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
    "exits-at-import": "import sys\nsys.exit('layerport-exits needs a GPU driver')\n",
    "exits-in-hook": (
        "import sys\nfrom layerport import hookimpl\n\n@hookimpl\n"
        "def register_layers(register):\n    sys.exit(3)\n"
    ),
    "unmarked-hook": "def register_layers(register):\n    pass\n",
    "returns-specs": (
        "from layerport import hookimpl\n\n@hookimpl\ndef register_layers(register):\n"
        "    return []\n"
    ),
    "imports-a-missing-name": "from json import no_such_name\n",
    "shows-a-module": (
        "import json\nfrom layerport import hookimpl\n\n@hookimpl\n"
        "def register_layers(register):\n    raise TypeError(f'expected a LayerSpec, got {json}')\n"
    ),
}
BROKEN_MESSAGES = {
    "import-error": "No module named 'layerport_no_such_module_anywhere'",
    "hook-raises": "its register_layers hook raised: RuntimeError: the hook blew up",
    "invalid-spec": "name must be lowercase letters",
    "wrong-arguments": "registrar",
    "misspelled-hook": "unknown hook 'register_layer'",
    "exits-at-import": "SystemExit: layerport-exits needs a GPU driver",
    "exits-in-hook": "its register_layers hook raised: SystemExit: 3",
    "unmarked-hook": "defines register_layers but does not mark it @hookimpl",
    "returns-specs": "its register_layers hook returned a list; hooks return nothing",
    # Python's message ends with the path of json/__init__.py, which the leak check
    # below refuses: the module's name says as much.
    "imports-a-missing-name": (
        "cannot load entry point 'layerport_imports_a_missing_name': ImportError: cannot import "
        "name 'no_such_name' from 'json'"
    ),
    "shows-a-module": "TypeError: expected a LayerSpec, got module json",
}


def make_distribution(
    site: Path, name: str, source: str, entry_name: str | None = None, attribute: str = ""
) -> None:
    """Install a fake distribution ``name`` whose ``layerport`` entry point is a module
    (or, with ``attribute``, an object in it)."""
    module = name.replace("-", "_")
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    value = f"{module}:{attribute}" if attribute else module
    make_dist_info(site, name, {entry_name or module: value})


def make_dist_info(
    site: Path, name: str, entry_points: dict[str, str], version: str = "1.2.3"
) -> None:
    """Install only the metadata of a distribution ``name``: its ``layerport`` entry points
    (name = value), naming modules that may come from another distribution."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{entry} = {value}\n" for entry, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[layerport]\n{lines}")


def layerport(site: Path | list[Path], *args: str, **env: str) -> Result:
    """Run layerport with ``site`` (or each folder of a list, in order) first on the path."""
    folders = [str(folder) for folder in ([site] if isinstance(site, Path) else site)]
    pythonpath = os.pathsep.join(filter(None, [*folders, os.environ.get("PYTHONPATH")]))
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
    # No repr of a module or a dict, and no file path from inside the environment.
    assert not re.search(r"<module |\{'[^']*': ", listed.stderr), listed.stderr
    assert os.sep not in listed.stderr, listed.stderr
    assert "fake" in listed.stdout and "linear" in listed.stdout
    assert layerport(site, "run", "fake").exit_code == 0
    assert layerport(site, "run", "linear").exit_code == 0
    plugins = json.loads(layerport(site, "plugins", "--json").stdout)["plugins"]
    failed = next(row for row in plugins if row["name"] == name)
    assert failed["status"] == "failed" and BROKEN_MESSAGES[case] in failed["error"]


@pytest.mark.parametrize("case", ["import-error", "hook-raises", "exits-in-hook"])
def test_debug_reraises_a_broken_plugins_error(site: Path, case: str) -> None:
    make_distribution(site, f"layerport-{case}", BROKEN[case])
    result = layerport(site, "list", "--debug")
    assert result.exit_code == 1  # never the plugin's own exit code
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: ")


def test_an_entry_point_naming_a_spec_is_reported_with_the_fix(site: Path) -> None:
    # qkvrep = acme_layers:SPEC names the LayerSpec itself, not a module with a hook.
    make_distribution(
        site,
        "acme-layers",
        GOOD_PLUGIN.format(layer="qkvrep"),
        entry_name="qkvrep",
        attribute="SPEC",
    )
    plugins = layerport(site, "plugins", "--json")
    assert plugins.exit_code == 0, plugins.stderr
    failed = next(
        row for row in json.loads(plugins.stdout)["plugins"] if row["name"] == "acme-layers"
    )
    assert failed["status"] == "failed"
    assert (
        "entry point 'qkvrep = acme_layers:SPEC' names a LayerSpec, which implements no "
        "layerport hook"
    ) in failed["error"]
    assert "register it from a register_layers hook" in failed["error"]
    run = layerport(site, "run", "qkvrep")
    assert run.exit_code == 2
    assert run.stderr.splitlines()[-1].startswith(
        "Error: unknown layer 'qkvrep'; plugin acme-layers, which may provide it, failed: "
        "entry point 'qkvrep = acme_layers:SPEC' names a LayerSpec"
    )


QUITTER = GOOD_PLUGIN.replace(
    "def build(params):\n", "def build(params):\n    import sys\n\n    sys.exit(4)\n"
)


def test_a_build_that_exits_fails_only_its_own_layer(site: Path, tmp_path: Path) -> None:
    make_distribution(site, "layerport-quitter", QUITTER.format(layer="quitter"))
    run = layerport(site, "run", "quitter")
    assert run.exit_code == 1
    assert run.stderr == (
        "Error: layer quitter (plugin layerport-quitter): build() raised SystemExit: 4\n"
    )
    folder = tmp_path / "all"
    exported = layerport(
        site, "export", "--all", "-o", str(folder), LAYERPORT_LOAD_PLUGINS="layerport-quitter"
    )
    assert exported.exit_code == 1
    assert sorted(path.name for path in folder.iterdir()) == ["linear.onnx", "rnn.onnx"]
    assert exported.stderr.splitlines()[-1].startswith("Error: 1 of 3 layers failed")
    assert "build() raised SystemExit: 4" in exported.stdout + exported.stderr
    debug = layerport(site, "run", "quitter", "--debug")
    assert debug.exit_code == 1 and "Traceback" in debug.stderr


def test_an_interrupt_in_a_plugin_still_interrupts(site: Path) -> None:
    make_distribution(
        site,
        "layerport-ctrl-c",
        "from layerport import hookimpl\n\n@hookimpl\ndef register_layers(register):\n"
        "    raise KeyboardInterrupt\n",
    )
    listed = layerport(site, "list")
    assert listed.exit_code == 130
    assert listed.stderr == "Error: interrupted\n"


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


def plugin_rows(site: Path | list[Path]) -> tuple[dict[str, dict[str, object]], list[str]]:
    """``plugins --json``: its rows by plugin name, and its warnings."""
    result = layerport(site, "plugins", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    return {row["name"]: row for row in report["plugins"]}, report["warnings"]


def layer_rows(site: Path | list[Path], layer: str) -> list[dict[str, object]]:
    """The rows of ``list --json`` for the bare name ``layer``, after asserting no warning."""
    listed = layerport(site, "list", "--json")
    assert listed.exit_code == 0 and listed.stderr == "", listed.stderr
    return [row for row in json.loads(listed.stdout) if row["name"] == layer]


# An alias kept for old configurations: the same module under a second name, or
# the same object re-exported by another module of the distribution.
ALIASES = {
    "same-module": "layerport_alias",
    "re-exported": "layerport_alias_compat:plugin",
}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_two_entry_points_to_one_object_register_it_once(site: Path, alias: str) -> None:
    make_distribution(site, "layerport-alias", GOOD_PLUGIN.format(layer="aliased"))
    (site / "layerport_alias_compat.py").write_text("import layerport_alias as plugin\n")
    (site / "layerport_alias-1.2.3.dist-info" / "entry_points.txt").write_text(
        f"[layerport]\naliased = layerport_alias\nold-name = {ALIASES[alias]}\n"
    )
    assert [row["plugin"] for row in layer_rows(site, "aliased")] == ["layerport-alias"]
    for name in ("aliased", "layerport-alias:aliased"):
        ran = layerport(site, "run", name, "--json")
        assert ran.exit_code == 0 and ran.stderr == "", ran.stderr
        assert json.loads(ran.stdout)["outputs"]["y"]["shape"] == [4, 2]
    rows, warnings = plugin_rows(site)
    assert warnings == []
    assert rows["layerport-alias"] == {
        "name": "layerport-alias",
        "version": "1.2.3",
        "status": "ok",
        "error": None,
        "layers": ["aliased"],
        "entry_points": ["aliased", "old-name"],
    }
    table = layerport(site, "plugins")
    assert table.exit_code == 0 and table.stderr == ""
    row = next(line for line in table.stdout.splitlines() if "layerport-alias" in line)
    assert row.split() == ["layerport-alias", "1.2.3", "aliased", "aliased,", "old-name", "ok"]


def test_two_entry_points_to_one_broken_module_warn_once(site: Path) -> None:
    make_distribution(site, "layerport-alias", BROKEN["hook-raises"])
    (site / "layerport_alias-1.2.3.dist-info" / "entry_points.txt").write_text(
        "[layerport]\naliased = layerport_alias\nold-name = layerport_alias\n"
    )
    listed = layerport(site, "list")
    assert listed.exit_code == 0
    assert listed.stderr == (
        "Warning: plugin layerport-alias is disabled: its register_layers hook raised: "
        "RuntimeError: the hook blew up\n"
    )
    rows, _ = plugin_rows(site)
    assert rows["layerport-alias"]["status"] == "failed"
    assert rows["layerport-alias"]["error"] == (
        "its register_layers hook raised: RuntimeError: the hook blew up"
    )
    assert rows["layerport-alias"]["entry_points"] == ["aliased", "old-name"]


# Which distribution's registration is used follows the path, as import does.
SHARED_MODULE_WARNINGS = {
    "layerport-a": "plugins layerport-a and layerport-b both provide layerport_a; "
    "using it from layerport-a",
    "layerport-b": "plugins layerport-b and layerport-a both provide layerport_a; "
    "using it from layerport-b",
}


@pytest.mark.parametrize("first", sorted(SHARED_MODULE_WARNINGS))
def test_one_module_in_two_distributions_is_used_from_the_first(tmp_path: Path, first: str) -> None:
    # layerport-b ships no code of its own: its entry point names layerport-a's
    # module (a fork, or a package renamed with its old name still installed).
    folders = {"layerport-a": tmp_path / "a", "layerport-b": tmp_path / "b"}
    for folder in folders.values():
        folder.mkdir()
    make_distribution(folders["layerport-a"], "layerport-a", GOOD_PLUGIN.format(layer="shared"))
    make_dist_info(folders["layerport-b"], "layerport-b", {"shared": "layerport_a"})
    second = "layerport-b" if first == "layerport-a" else "layerport-a"
    path = [folders[first], folders[second]]
    expected = SHARED_MODULE_WARNINGS[first]
    listed = layerport(path, "list", "--json")
    assert listed.exit_code == 0
    assert listed.stderr == f"Warning: {expected}\n"
    shared = [row for row in json.loads(listed.stdout) if row["name"] == "shared"]
    assert [row["plugin"] for row in shared] == [first]
    ran = layerport(path, "run", "shared")
    assert ran.exit_code == 0 and ran.stderr == f"Warning: {expected}\n"
    rows, warnings = plugin_rows(path)
    assert warnings == [expected]
    assert rows[first]["status"] == "ok" and rows[first]["layers"] == ["shared"]
    assert second not in rows  # it provides nothing: the warning says why


def make_two_copies(tmp_path: Path) -> list[Path]:
    """layerport-twice on the path twice: an editable 1.3.0 first, then a regular 1.2.3."""
    editable, regular = tmp_path / "editable", tmp_path / "regular"
    for folder, version, layer in ((editable, "1.3.0", "twice"), (regular, "1.2.3", "twice")):
        folder.mkdir()
        (folder / "layerport_twice.py").write_text(GOOD_PLUGIN.format(layer=layer))
        make_dist_info(folder, "layerport-twice", {"twice": "layerport_twice"}, version)
    return [editable, regular]


def test_one_distribution_on_the_path_twice_is_loaded_once(tmp_path: Path) -> None:
    path = make_two_copies(tmp_path)
    assert [(row["plugin"], row["version"]) for row in layer_rows(path, "twice")] == [
        ("layerport-twice", "1.3.0")
    ]
    ran = layerport(path, "run", "twice")
    assert ran.exit_code == 0 and ran.stderr == "", ran.stderr
    rows, warnings = plugin_rows(path)
    assert warnings == []
    assert rows["layerport-twice"]["status"] == "ok"
    assert rows["layerport-twice"]["version"] == "1.3.0"
    assert rows["layerport-twice"]["entry_points"] == ["twice"]


# importlib.metadata folds a distribution seen twice into the first copy; an
# environment whose metadata does not (an older importlib_metadata backport, a
# custom finder) must not make layerport warn either.
UNFOLDED = """
import importlib.metadata as metadata
import sys

def entry_points(group):
    return [ep for dist in metadata.distributions() for ep in dist.entry_points if ep.group == group]

metadata.entry_points = entry_points
from layerport.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("second_module", ["layerport_twice", "layerport_twice_old"])
def test_one_distribution_seen_twice_by_unfolded_metadata_is_loaded_once(
    tmp_path: Path, second_module: str
) -> None:
    editable, regular = make_two_copies(tmp_path)
    # With a module of another name, the second copy is a different object under
    # the same distribution and entry point: the first copy on the path wins.
    (regular / "layerport_twice_old.py").write_text(GOOD_PLUGIN.format(layer="twice"))
    (regular / "layerport_twice-1.2.3.dist-info" / "entry_points.txt").write_text(
        f"[layerport]\ntwice = {second_module}\n"
    )
    script = tmp_path / "unfolded.py"
    script.write_text(UNFOLDED)
    pythonpath = os.pathsep.join(
        filter(None, [str(editable), str(regular), os.environ.get("PYTHONPATH")])
    )
    env = {**os.environ, "PYTHONPATH": pythonpath}

    def unfolded(*args: str) -> Result:
        done = subprocess.run(
            [sys.executable, str(script), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    listed = unfolded("list", "--json")
    assert listed.exit_code == 0 and listed.stderr == "", listed.stderr
    twice = [row for row in json.loads(listed.stdout) if row["name"] == "twice"]
    assert [(row["plugin"], row["version"]) for row in twice] == [("layerport-twice", "1.3.0")]
    ran = unfolded("run", "twice")
    assert ran.exit_code == 0 and ran.stderr == "", ran.stderr
    plugins_json = unfolded("plugins", "--json")
    assert plugins_json.exit_code == 0 and plugins_json.stderr == ""
    report = json.loads(plugins_json.stdout)
    assert report["warnings"] == []
    rows = [row for row in report["plugins"] if row["name"] == "layerport-twice"]
    assert [(row["status"], row["entry_points"]) for row in rows] == [("ok", ["twice"])]


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
    assert sorted(row["name"] for row in json.loads(targets.stdout)) == [
        "noted",
        "onnx",
        "triton",
        "triton-python",
    ]
    out = site / "linear.onnx"
    exported = layerport(
        site, "export", "linear", "--target", "noted", "--target-option", "note=hi", "-o", str(out)
    )
    assert exported.exit_code == 0, exported.stderr
    assert out.is_file() and out.with_suffix(".txt").read_text() == "hi linear"
    unknown = layerport(site, "export", "linear", "--target", "nope", "-o", str(out))
    assert unknown.exit_code == 2
    assert (
        unknown.stderr
        == "Error: unknown export target 'nope'; targets: noted, onnx, triton, triton-python\n"
    )
    bad_option = layerport(
        site, "export", "linear", "--target", "noted", "--target-option", "colour=red"
    )
    assert bad_option.exit_code == 2
    assert "unknown option 'colour' for export target 'noted'; options: note" in bad_option.stderr


def test_every_hook_is_documented_in_the_guide() -> None:
    # In the style of datasette's test_plugin_hooks_are_documented.
    import inspect

    guide = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    for name in _hook_names():
        arguments = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"\n## {name}({arguments})\n" in guide, f"hook {name}({arguments}) is not documented"


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
