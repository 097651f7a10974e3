"""``layerport new-plugin``: a package that works as generated, and the guide's tutorial is it."""

from __future__ import annotations

import re
from pathlib import Path

from hostile import assert_refused, assert_succeeded
from layerport.cli.scaffold import plugin_files

from conftest import install_for_test, run_package_tests, run_process

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def test_a_new_plugin_installs_registers_exports_and_passes_its_tests(tmp_path) -> None:
    result = run_process("new-plugin", "my_norm", "--dir", str(tmp_path))
    assert_succeeded(result)
    package = tmp_path / "layerport-my_norm"
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*") if p.is_file()) == [
        "README.md",
        "layerport_my_norm/__init__.py",
        "layerport_my_norm/module.py",
        "pyproject.toml",
        "tests/test_my_norm.py",
    ]
    env = install_for_test(package, tmp_path / "site")
    listed = run_process("list", env=env)
    assert "my_norm" in listed.stdout and "layerport-my_norm" in listed.stdout, listed
    exported = run_process("export", "my_norm", "-o", str(tmp_path / "m.onnx"), env=env)
    assert_succeeded(exported)
    assert "verification: passed" in exported.stdout
    assert "8 passed" in run_package_tests(package, env)


def test_the_readme_tutorial_is_what_new_plugin_writes() -> None:
    blocks = re.findall(r"```(?:toml|python)\n# file: layerport-mynorm/(\S+)\n(.*?)```",
                        GUIDE.read_text(), flags=re.DOTALL)  # fmt: skip
    generated = plugin_files("mynorm")
    assert {path for path, _ in blocks} == set(generated) - {"README.md"}
    for path, body in blocks:
        assert body == generated[path], f"the guide's {path} differs from new-plugin's"


def test_new_plugin_refuses_bad_names_and_existing_folders(tmp_path) -> None:
    assert_refused(
        run_process("new-plugin", "My-Norm", "--dir", str(tmp_path)),
        2,
        "a plugin's layer name must be a lowercase identifier",
    )
    (tmp_path / "layerport-taken").mkdir()
    assert_refused(
        run_process("new-plugin", "taken", "--dir", str(tmp_path)),
        2,
        "exists already; choose another name or folder",
    )


def test_new_plugin_into_an_unwritable_folder_is_bad_input() -> None:
    # /proc takes no new folders, whoever runs the tests.
    assert_refused(
        run_process("new-plugin", "foo", "--dir", "/proc"), 2, "cannot write /proc/layerport-foo"
    )


def test_new_plugin_warns_when_the_name_is_taken(tmp_path) -> None:
    result = run_process("new-plugin", "rmsnorm", "--dir", str(tmp_path))
    assert result.exit_code == 0  # the package is written: replacing a layer is allowed
    assert result.stderr.strip() == (
        "Warning: a layer named rmsnorm is already registered by layerport-nn: with both "
        "installed, rmsnorm must be asked for as PLUGIN:rmsnorm; choose another name unless "
        "you mean to replace it"
    )
    free = run_process("new-plugin", "mynorm", "--dir", str(tmp_path))
    assert free.exit_code == 0 and free.stderr == ""
