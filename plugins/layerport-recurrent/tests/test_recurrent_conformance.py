"""layerport's conformance kit over both layer types of this plugin."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from layerport.plugin import CHECKS


@pytest.mark.parametrize("layer", ["lstm", "elman"])
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_conformance(check: Callable[[str], None], layer: str) -> None:
    check(layer)
