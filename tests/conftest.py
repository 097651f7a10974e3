"""Shared fixtures: a CLI runner, and test plugins registered and removed around a test."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from layerport import Dim, LayerSpec, Param, Tensor, hookimpl
from layerport.cli import _State, main
from layerport.plugins import pm


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def invoke(args: list[str], capsys: pytest.CaptureFixture[str]) -> Result:
    """Run the CLI in this process the way the console script does, exit code included."""
    _State.warned = False
    try:
        main(args)
        exit_code = 0
    except SystemExit as exit_:
        exit_code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return Result(exit_code, captured.out, captured.err)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def run(*args: str) -> Result:
        return invoke(list(args), capsys)

    return run


def run_process(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Result:
    """Run ``python -m layerport`` in a fresh process, as a user would."""
    completed = subprocess.run(
        [sys.executable, "-m", "layerport", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=600,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def tiny_spec(name: str = "tiny", description: str = "A test layer.") -> LayerSpec:
    """A small linear-like layer type, built from torch.nn.Linear."""

    def build(params):  # type: ignore[no-untyped-def]
        from torch import nn

        return nn.Linear(int(params["width"]), 3)

    return LayerSpec(
        name=name,
        description=description,
        build=build,
        weights=lambda params: {"weight": (3, int(params["width"])), "bias": (3,)},
        params=(Param("width", int, 4, "input width", minimum=1, maximum=64),),
        dims=(Dim("batch", 5, "samples"),),
        inputs=(Tensor("x", ("batch", "width")),),
        outputs=(Tensor("y", ("batch", "3")),),
    )


class SpecPlugin:
    """A plugin object that registers the given specs."""

    def __init__(self, *specs: LayerSpec) -> None:
        self.specs = specs

    @hookimpl
    def register_layers(self, register):  # type: ignore[no-untyped-def]
        for spec in self.specs:
            register(spec)


@contextlib.contextmanager
def registered_plugins() -> Iterator[Callable[..., object]]:
    """Register plugin objects under a name inside the block, and always unregister them."""
    registered: list[object] = []

    def register(plugin: object, name: str) -> object:
        pm.register(plugin, name=name)
        registered.append(plugin)
        return plugin

    try:
        yield register
    finally:
        for plugin in registered:
            pm.unregister(plugin)


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., object]]:
    """Register plugin objects under a name for one test, and always unregister them."""
    with registered_plugins() as register:
        yield register


def install_for_test(package: Path, site: Path) -> dict[str, str]:
    """pip-install a plugin package into ``site``, with the tested pins; the env that finds it.

    ``--no-deps --no-build-isolation``: layerport and setuptools are already in this
    environment, and nothing may be fetched.
    """
    constraints = Path(__file__).resolve().parent.parent / "constraints.txt"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-c", str(constraints), "--target", str(site),
         str(package)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def run_package_tests(package: Path, env: dict[str, str]) -> str:
    """Run a plugin package's own tests with pytest; their output, after asserting they pass."""
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=package, capture_output=True, text=True, env={**os.environ, **env},
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout[-3000:]
    return tests.stdout
