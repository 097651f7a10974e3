"""The conformance kit, run over every registered layer type, built-ins included."""

from __future__ import annotations

import pytest

from layerport.plugins import get_registry
from layerport.testing import CHECKS

LAYERS = [layer.qualified_name for layer in get_registry()]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("layer", LAYERS)
def test_layer_conforms(layer: str, check) -> None:
    check(layer)
