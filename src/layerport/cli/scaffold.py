"""The files of a new plugin package, as ``layerport new-plugin NAME`` writes them.

The package is the README's plugin tutorial with NAME in place of ``mynorm``: an
RMS normalisation layer that works as written, so an author starts from a
package that installs, registers, exports, verifies and passes its own tests,
and changes it into their layer. A test checks that the tutorial's files are
exactly what ``new-plugin mynorm`` writes, so the two cannot drift apart.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from layerport.errors import UserInputError
from layerport.runtime.files import atomic_write_bytes

# A layer name that is also a Python identifier, so the package can be named after it.
_PLUGIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "layerport-$name"
version = "0.1.0"
description = "The $name layer type for layerport."
dependencies = ["layerport"]

[project.entry-points.layerport]
$name = "layerport_$name"

[tool.setuptools]
packages = ["layerport_$name"]
"""

_SPEC = '''\
"""layerport-$name: root-mean-square layer normalisation as a layerport layer type."""

from layerport.plugin import Dim, LayerSpec, Param, Tensor, hookimpl


def build(params):
    from layerport_$name.module import $cls  # torch is imported only to build

    return $cls(params["features"], params["eps"])


$constant = LayerSpec(
    name="$name",
    description="Root-mean-square normalisation with a learned scale.",
    build=build,
    weights=lambda params: {"scale": (params["features"],)},
    params=(
        Param("features", int, 32, "size of the normalised last dim", minimum=1),
        Param("eps", float, 1e-6, "added to the mean square", minimum=1e-12, maximum=1e-1),
    ),
    dims=(Dim("batch", 8, "rows"), Dim("tokens", 10, "tokens per row")),
    inputs=(Tensor("x", ("batch", "tokens", "features"), "input"),),
    outputs=(Tensor("y", ("batch", "tokens", "features"), "x / rms(x) * scale"),),
)


@hookimpl
def register_layers(register):
    register($constant)
'''

_MODULE = """\
import torch
from torch import nn


class $cls(nn.Module):
    def __init__(self, features: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        # Random rather than ones, so that a test would notice ignored weights.
        self.scale = nn.Parameter(1 + 0.1 * torch.randn(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x / rms * self.scale
"""

_TESTS = """\
import numpy as np
import pytest

from layerport.plugin import CHECKS, get_registry, resolve_config, run_layer


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_conformance(check):
    check("$name")


def test_matches_numpy():
    config = resolve_config(get_registry(), "$name", params={"features": 5})
    inputs = config.random_inputs()
    y = run_layer(config, inputs)["y"]
    x = inputs["x"].astype(np.float64)
    expected = x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + 1e-6)
    ratio = y / expected  # the learned scale, the same for every row
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[0, 0], ratio.shape), rtol=1e-4)
"""

_README = """\
# layerport-$name

A layer type for [layerport](https://github.com/layerport/layerport), made with
`layerport new-plugin $name`. It starts as root-mean-square normalisation with a
learned scale; change `layerport_$name/__init__.py` (the spec: no torch) and
`layerport_$name/module.py` (the torch module) into your layer.

```console
pip install -e .   # add -c with layerport's constraints.txt, to keep torch pinned
layerport show $name
layerport export $name
pytest tests
```

The tests run layerport's conformance kit (`layerport.testing.CHECKS`) and a
check against numpy; replace the numpy check with an oracle for your layer.
"""

TEMPLATES = {
    "pyproject.toml": _PYPROJECT,
    "layerport_$name/__init__.py": _SPEC,
    "layerport_$name/module.py": _MODULE,
    "tests/test_$name.py": _TESTS,
    "README.md": _README,
}


def plugin_files(name: str) -> dict[str, str]:
    """The new package's files, by path inside ``layerport-NAME/``, for a layer called ``name``.

    Raises ``UserInputError`` for a name that is not a lowercase identifier.
    """
    if not _PLUGIN_NAME.match(name):
        raise UserInputError(
            f"a plugin's layer name must be a lowercase identifier (letters, digits, '_', "
            f"starting with a letter), got {name!r}"
        )
    values = {
        "name": name,
        "cls": "".join(word.title() for word in name.split("_")),  # my_norm -> MyNorm
        "constant": name.upper(),
    }
    return {
        string.Template(path).substitute(values): string.Template(body).substitute(values)
        for path, body in TEMPLATES.items()
    }


def write_plugin(name: str, folder: Path) -> Path:
    """Write the package ``layerport-NAME`` into ``folder``; returns the package's folder.

    Raises ``UserInputError`` if it exists already: nothing is overwritten.
    """
    files = plugin_files(name)
    root = folder / f"layerport-{name}"
    if root.exists():
        raise UserInputError(f"{root} exists already; choose another name or folder")
    try:
        for relative, body in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, body.encode())
    except OSError as error:
        raise UserInputError(f"cannot write {root}: {error.strerror or error}") from error
    return root
