"""The conformance kit, run over every registered layer type, built-ins included."""

from __future__ import annotations

import pytest

from layerport import testing
from layerport.plugins import get_registry
from layerport.testing import CHECKS

from conftest import SpecPlugin, registered_plugins, tiny_spec

LAYERS = [layer.qualified_name for layer in get_registry()]


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("layer", LAYERS)
def test_layer_conforms(layer: str, check) -> None:
    check(layer)


def test_an_export_is_not_reused_for_another_spec_of_the_same_name() -> None:
    # A plugin author's fixture may register a different spec under the same name.
    first_spec, second_spec = tiny_spec(), tiny_spec(description="Another.")
    with registered_plugins() as register:
        register(SpecPlugin(first_spec), "test-plugin")
        first = testing.exported_layer("tiny", "float32")
        assert testing.exported_layer("test-plugin:tiny", "float32") is first
    with registered_plugins() as register:
        register(SpecPlugin(second_spec), "test-plugin")
        second = testing.exported_layer("tiny", "float32")
    assert first.config.spec is first_spec
    assert second.config.spec is second_spec
