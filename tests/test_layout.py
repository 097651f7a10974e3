"""The layout is the architecture: these tests fail when it drifts.

- the top level stays small; the rest lives in stage folders;
- ``layerport/runtime`` never imports torch, module by module;
- library code (everything outside ``cli/``) never names a CLI flag in a message;
- every command module is registered, so no command can silently vanish.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import layerport

PACKAGE = Path(layerport.__file__).parent
FLAG = re.compile(r"(?<![\w./-])(--[a-z][a-z0-9-]+|-p [a-z])")


def test_the_top_level_holds_at_most_fourteen_modules() -> None:
    # What every stage shares: errors, dtypes, the spec's registry and config,
    # the weights readers, the export's result, and the plugin author's API.
    modules = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(modules) <= 14, modules


def test_the_runtime_imports_no_torch_import_by_import() -> None:
    names = sorted(f"layerport.runtime.{path.stem}" for path in (PACKAGE / "runtime").glob("*.py"))
    assert "layerport.runtime.session" in names and len(names) >= 9
    probe = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "    heavy = [m for m in ('torch', 'onnxscript', 'safetensors') if m in sys.modules]\n"
        "    if heavy:\n"
        "        print(name, 'imported', heavy[0]); break\n"
        "else:\n"
        "    print('clean')\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert completed.stdout.strip() == "clean", completed.stdout + completed.stderr


def test_the_probe_sees_torch() -> None:
    # Without this, the test above could never fail.
    completed = subprocess.run(
        [sys.executable, "-c", "import sys, layerport.eager.build; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
    )
    assert completed.stdout.strip() == "True", completed.stderr


def library_messages() -> list[tuple[str, int, str]]:
    """Every string literal outside ``cli/`` that is not a docstring: (file, line, text)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text())
        # A string that stands alone as a statement is documentation: a module's,
        # class's or function's docstring, or an attribute's (the spec's fields).
        docstrings = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        }
        found += [
            (str(path.relative_to(PACKAGE)), node.lineno, node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ]
    return found


def test_no_library_message_names_a_cli_flag() -> None:
    flagged = [
        f"{path}:{line}: {text!r}" for path, line, text in library_messages() if FLAG.search(text)
    ]
    assert not flagged, "library code must advise with errors.Setting:\n" + "\n".join(flagged)


def test_the_flag_check_can_fail() -> None:
    assert FLAG.search("pass the same file with --weights")
    assert FLAG.search("set it with -p input_size=SIZE")
    assert not FLAG.search("the params argument (input_size=SIZE)")


def test_every_command_module_is_registered() -> None:
    from layerport.cli import cli

    # A module new_plugin.py holds the command new-plugin.
    modules = {
        path.stem.replace("_", "-") for path in (PACKAGE / "cli" / "commands").glob("*.py")
    } - {"--init--"}
    assert modules <= set(cli.list_commands(None)), modules - set(cli.list_commands(None))


REPOSITORY = Path(__file__).resolve().parent.parent


def layerport_imports(source: str) -> set[str]:
    """The ``layerport`` modules a piece of Python source imports from."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name == "layerport" or name.startswith("layerport.")}
    return found


def test_plugins_import_only_layerport_plugin() -> None:
    """A plugin author needs one module (issue 21): the examples and the scaffold show it."""
    from layerport.cli import scaffold

    sources = {
        str(path.relative_to(REPOSITORY)): path.read_text()
        for path in sorted((REPOSITORY / "plugins").rglob("*.py"))
    }
    sources |= {
        f"scaffold {name}": getattr(scaffold, name).replace("$", "x")
        for name in ("_SPEC", "_MODULE", "_TESTS")
    }
    assert len(sources) >= 15
    imports = {
        where: layerport_imports(source) - {"layerport.plugin"} for where, source in sources.items()
    }
    assert not {where: found for where, found in imports.items() if found}


def test_the_plugin_import_check_can_fail() -> None:
    assert layerport_imports("from layerport.spec import Dim\nimport layerport.testing") == {
        "layerport.spec",
        "layerport.testing",
    }


def test_layerport_plugin_declares_without_torch_and_builds_with_it() -> None:
    probe = (
        "import sys, layerport.plugin as plugin\n"
        "before = 'torch' in sys.modules\n"
        "plugin.run_stacked, plugin.CHECKS\n"
        "print(before, 'torch' in sys.modules, sorted(set(plugin.__all__) - set(dir(plugin)) - set(plugin._LAZY)))\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert completed.stdout.strip() == "False True []", completed.stdout + completed.stderr


# The stages, lowest first: a module may import from its own stage and those
# below it, never from one above. The longest matching prefix decides.
STAGES = (
    ("layerport", 0),  # the package's __init__: the spec's names, for plugins
    ("layerport.errors", 0),
    ("layerport.dtypes", 0),
    ("layerport.hookspecs", 0),
    ("layerport.spec", 0),
    ("layerport.runtime", 0),
    ("layerport.serving", 1),
    ("layerport.registry", 1),
    ("layerport.targets", 1),
    ("layerport.weights", 1),
    ("layerport.readers", 1),
    ("layerport.config", 2),
    ("layerport.plugins", 2),
    ("layerport.model", 2),  # a model file composes layers into one layer's configuration
    ("layerport.eager", 3),
    ("layerport.export", 4),
    ("layerport.verify", 5),
    ("layerport.results", 6),
    ("layerport.pipeline", 6),
    ("layerport.bench", 6),
    ("layerport.default_plugins", 7),
    ("layerport.testing", 7),
    ("layerport.plugin", 8),
    ("layerport.cli", 8),
    # The built-in commands are a plugin of the CLI's own hook: they are the CLI.
    ("layerport.default_plugins.commands", 8),
    ("layerport.__main__", 9),
)


def stage_of(module: str) -> int:
    matches = [
        (len(prefix), rank)
        for prefix, rank in STAGES
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1]


def climbs(package: Path) -> list[str]:
    """Every import, at any depth (lazy ones included), from a stage above the importer's.

    Imports under ``if TYPE_CHECKING:`` are names for annotations, not a dependency.
    """
    found = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        annotations_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in annotations_only or not isinstance(node, ast.ImportFrom):
                continue
            target = node.module or ""
            if target.startswith("layerport") and stage_of(target) > stage_of(module):
                found.append(f"{module} imports {target}")
    return found


def test_no_module_imports_from_a_stage_above_it() -> None:
    """Following an export's configuration never climbs back up (issue 21: at most 5; now 0)."""
    assert climbs(PACKAGE) == []


def test_the_climb_check_can_fail(tmp_path: Path) -> None:
    package = tmp_path / "layerport"
    (package / "runtime").mkdir(parents=True)
    (package / "runtime" / "session.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from layerport.config import LayerConfig\n"
        "def f():\n    from layerport.eager.build import build_module\n"
    )
    assert climbs(package) == ["layerport.runtime.session imports layerport.eager.build"]
