"""Broken plugins never become a traceback: ``list`` and ``run`` go on, and say what broke."""

from __future__ import annotations

import os
from pathlib import Path

from hostile import assert_refused, assert_succeeded
from layerport import LayerSpec, Tensor, hookimpl

from conftest import SpecPlugin, run_process, tiny_spec


class RaisingPlugin:
    @hookimpl
    def register_layers(self, register):  # type: ignore[no-untyped-def]
        register(tiny_spec(name="half-registered"))
        raise RuntimeError("the hook blew up")


class InvalidSpecPlugin:
    @hookimpl
    def register_layers(self, register):  # type: ignore[no-untyped-def]
        register(
            LayerSpec(
                name="Bad Name",
                description="x",
                build=print,
                weights=dict,
                inputs=(Tensor("x", ("1",)),),
                outputs=(Tensor("y", ("1",)),),
            )
        )


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Warning: plugin ")]


def test_a_hook_that_raises(cli, register_plugin) -> None:
    register_plugin(RaisingPlugin(), "raiser")
    listed = cli("list")
    assert_succeeded(listed)
    assert (
        "Warning: plugin raiser is disabled: its register_layers hook raised: "
        "RuntimeError: the hook blew up"
    ) in _warnings(listed.stderr)
    assert "linear" in listed.stdout and "half-registered" not in listed.stdout
    assert_succeeded(cli("run", "linear"))
    assert_refused(
        cli("run", "raiser:half-registered"),
        2,
        "unknown layer 'raiser:half-registered'; plugin raiser, which may provide it, failed",
        "RuntimeError: the hook blew up",
    )


def test_an_invalid_spec(cli, register_plugin) -> None:
    register_plugin(InvalidSpecPlugin(), "invalid")
    register_plugin(SpecPlugin(tiny_spec(), "not a spec"), "sloppy")  # type: ignore[arg-type]
    listed = cli("list")
    assert_succeeded(listed)
    warnings = _warnings(listed.stderr)
    assert any(
        line.startswith("Warning: plugin invalid is disabled: its register_layers hook raised")
        and "layer spec 'Bad Name': name must be lowercase" in line
        for line in warnings
    ), warnings
    assert (
        "Warning: plugin sloppy is disabled: it registered an invalid layer: "
        "InvalidSpec: register() takes a LayerSpec, got str"
    ) in warnings
    assert "tiny" not in listed.stdout
    assert_succeeded(cli("run", "rnn", "--dim", "seq=3"))
    assert_refused(cli("run", "tiny"), 2, "unknown layer 'tiny'", "some plugins failed to load")


def test_a_builder_that_returns_no_module(cli, register_plugin) -> None:
    spec = tiny_spec(name="hollow")
    object.__setattr__(spec, "build", lambda params: "not a module")
    register_plugin(SpecPlugin(spec), "hollow-plugin")
    assert_refused(cli("run", "hollow"), 1, "layer hollow: build() returned str, not an nn.Module")


def test_duplicate_names(cli, register_plugin) -> None:
    register_plugin(SpecPlugin(tiny_spec()), "plugin-a")
    register_plugin(SpecPlugin(tiny_spec()), "plugin-b")
    register_plugin(SpecPlugin(tiny_spec(name="twice"), tiny_spec(name="twice")), "stutter")
    register_plugin(SpecPlugin(tiny_spec(name="linear")), "impostor")
    listed = cli("list")
    assert_succeeded(listed)
    for name in ("plugin-a:tiny", "plugin-b:tiny", "impostor:linear", "layerport:linear"):
        assert name in listed.stdout
    assert (
        "Warning: plugin stutter is disabled: it registered an invalid layer: "
        "InvalidSpec: plugin stutter registers layer 'twice' twice"
    ) in _warnings(listed.stderr)
    assert_refused(
        cli("run", "tiny"),
        2,
        "layer 'tiny' is registered by both plugin-a and plugin-b",
        "choose one with plugin-a:tiny or plugin-b:tiny",
    )
    assert_refused(cli("run", "linear"), 2, "registered by both impostor and layerport")
    assert_succeeded(cli("run", "plugin-b:tiny"))
    assert_succeeded(cli("run", "layerport:linear"))
    assert_refused(
        cli("run", "twice"), 2, "unknown layer 'twice'; some plugins failed to load (stutter)"
    )


def test_a_broken_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    info = site / "layerport_broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: layerport-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[layerport]\nbroken = layerport_broken:plugin\n")
    (site / "layerport_broken.py").write_text("raise ImportError('half-installed')\n")
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "LAYERPORT_LOAD_PLUGINS": "layerport-broken",
    }
    listed = run_process("list", env=env)
    assert_succeeded(listed)
    assert listed.stderr == (
        "Warning: plugin layerport-broken is disabled: cannot load entry point "
        "'layerport_broken:plugin': ImportError: half-installed\n"
    )
    assert "linear" in listed.stdout
    result = run_process("run", "broken", env=env)
    assert_refused(
        result,
        2,
        "unknown layer 'broken'; plugin layerport-broken, which may provide it, failed",
        "ImportError: half-installed",
    )
    # The warning comes first, as a warning; the error is still the one last line.
    assert result.stderr.splitlines()[0].startswith("Warning: plugin layerport-broken")
