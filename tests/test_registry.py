"""The registry: registration through the hook, name clashes and name resolution."""

from __future__ import annotations

import pytest

from layerport.errors import AmbiguousLayer, InvalidSpec, UnknownLayer
from layerport.plugins import get_registry
from layerport.registry import PluginFailure, PluginInfo, Registry

from conftest import SpecPlugin, registered_plugins, tiny_spec


def test_builtins_register_through_the_hook() -> None:
    registry = get_registry()
    assert {layer.qualified_name for layer in registry} >= {"layerport:linear", "layerport:rnn"}


def test_test_plugin_registers_and_unregisters(register_plugin) -> None:
    register_plugin(SpecPlugin(tiny_spec()), "test-plugin")
    layer = get_registry().resolve("tiny")
    assert layer.plugin.name == "test-plugin"
    assert layer.qualified_name == "test-plugin:tiny"


def test_test_plugin_is_gone_after_the_fixture() -> None:
    # The fixture's own cleanup, driven inside one test: it must not depend on
    # which tests ran before in this worker.
    with registered_plugins() as register:
        register(SpecPlugin(tiny_spec()), "test-plugin")
        assert get_registry().resolve("tiny").plugin.name == "test-plugin"
    with pytest.raises(UnknownLayer):
        get_registry().resolve("tiny")


def test_same_name_from_two_plugins_is_ambiguous(register_plugin) -> None:
    register_plugin(SpecPlugin(tiny_spec()), "plugin-a")
    register_plugin(SpecPlugin(tiny_spec(description="Another.")), "plugin-b")
    registry = get_registry()
    assert [layer.qualified_name for layer in registry.providers("tiny")] == [
        "plugin-a:tiny",
        "plugin-b:tiny",
    ]
    with pytest.raises(AmbiguousLayer) as error:
        registry.resolve("tiny")
    assert "registered by both plugin-a and plugin-b" in str(error.value)
    assert "plugin-a:tiny or plugin-b:tiny" in str(error.value)
    assert registry.resolve("plugin-b:tiny").spec.description == "Another."


def test_clash_with_a_builtin_keeps_the_builtin_reachable(register_plugin) -> None:
    register_plugin(SpecPlugin(tiny_spec(name="linear")), "impostor")
    registry = get_registry()
    with pytest.raises(AmbiguousLayer, match="both impostor and layerport"):
        registry.resolve("linear")
    assert registry.resolve("layerport:linear").plugin.name == "layerport"


def test_one_plugin_registering_a_name_twice_is_refused() -> None:
    registry = Registry()
    info = PluginInfo("p", "1")
    registry.register(tiny_spec(), info)
    with pytest.raises(InvalidSpec, match="plugin p registers layer 'tiny' twice"):
        registry.register(tiny_spec(), info)


def test_register_refuses_non_specs() -> None:
    with pytest.raises(InvalidSpec, match="register\\(\\) takes a LayerSpec, got dict"):
        Registry().register({"name": "x"}, PluginInfo("p", "1"))  # type: ignore[arg-type]


def test_plugin_registering_something_invalid_is_isolated(register_plugin) -> None:
    register_plugin(SpecPlugin(tiny_spec(), "not a spec"), "sloppy")  # type: ignore[arg-type]
    registry = get_registry()
    assert [failure.plugin for failure in registry.failures] == ["sloppy"]
    assert "register() takes a LayerSpec, got str" in registry.failures[0].message
    # All or nothing: the valid spec it registered first is not half-committed.
    assert not registry.providers("tiny")
    assert registry.resolve("linear")


def test_unknown_layer_suggests_a_close_name() -> None:
    with pytest.raises(UnknownLayer, match="unknown layer 'lnear' \\(did you mean 'linear'\\?\\)"):
        get_registry().resolve("lnear")
    with pytest.raises(UnknownLayer, match="unknown layer 'nosuch:linear'"):
        get_registry().resolve("nosuch:linear")


def _registry_with_failure(plugin: str) -> Registry:
    registry = Registry()
    registry.register(tiny_spec(name="gru"), PluginInfo("layerport", "1"))
    registry.failures = [PluginFailure(plugin, "cannot load it: ImportError", ImportError())]
    return registry


@pytest.mark.parametrize(
    "name", ["grumpy", "layerport-grumpy:grumpy", "Layerport_Grumpy:thing", "GRUMPY"]
)
def test_a_failed_plugin_is_blamed_when_its_name_matches(name: str) -> None:
    with pytest.raises(UnknownLayer, match="plugin layerport-grumpy, which may provide it, failed"):
        _registry_with_failure("layerport-grumpy").resolve(name)


@pytest.mark.parametrize("name", ["gr", "r", "grump", "port", "other:grumpy-extra"])
def test_a_failed_plugin_is_not_blamed_for_a_part_of_its_name(name: str) -> None:
    with pytest.raises(UnknownLayer) as error:
        _registry_with_failure("layerport-grumpy").resolve(name)
    message = str(error.value)
    assert "which may provide it" not in message
    assert "some plugins failed to load (layerport-grumpy)" in message
    if name == "gr":
        assert "did you mean 'gru'?" in message
