"""The registry of layer types: registration bookkeeping and name resolution.

A layer is named either bare (``gru``) or qualified by the plugin that provides
it (``layerport-gru:gru``). When two plugins register the same bare name, neither
wins: both are listed, and the bare name asks the user to qualify it.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from layerport.errors import (
    AmbiguousLayer,
    InvalidSpec,
    LayerFailed,
    LayerportError,
    UnknownLayer,
    is_interrupt,
    one_line,
)
from layerport.spec import LayerSpec

QUALIFIER = ":"


@dataclass(frozen=True)
class PluginInfo:
    """Where a layer type comes from: a distribution name and version."""

    name: str
    version: str


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or whose hook failed."""

    plugin: str
    message: str
    error: BaseException
    entry_point: str = ""  # the entry point's name, when loading it failed


@dataclass(frozen=True)
class RegisteredLayer:
    spec: LayerSpec
    plugin: PluginInfo

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin.name}{QUALIFIER}{self.spec.name}"

    @contextlib.contextmanager
    def plugin_code(self, what: str) -> Iterator[None]:
        """Report anything the layer's own code raises as that layer's failure, not layerport's.

        ``what`` names the code (``build()``, ``weights()``). A broken layer then
        fails its own command (exit 1) and does not stop ``export --all`` for the
        others; ``SystemExit`` included, since a plugin must never end layerport.
        Only an interrupt goes through.
        """
        try:
            yield
        except LayerportError:
            raise
        except BaseException as error:
            if is_interrupt(error):
                raise
            raise LayerFailed(
                f"layer {self.spec.name} (plugin {self.plugin.name}): {what} raised "
                f"{type(error).__name__}: {one_line(error)}"
            ) from error


class Registry:
    """Layer types by name, and the plugins that failed to provide theirs."""

    def __init__(self) -> None:
        self._layers: list[RegisteredLayer] = []
        self.failures: list[PluginFailure] = []

    def __iter__(self) -> Iterator[RegisteredLayer]:
        return iter(sorted(self._layers, key=lambda layer: (layer.name, layer.plugin.name)))

    def __len__(self) -> int:
        return len(self._layers)

    def register(self, spec: LayerSpec, plugin: PluginInfo) -> None:
        """Add ``spec`` as provided by ``plugin``; one plugin cannot register a name twice."""
        if not isinstance(spec, LayerSpec):
            raise InvalidSpec(f"register() takes a LayerSpec, got {type(spec).__name__}")
        for layer in self._layers:
            if layer.qualified_name == f"{plugin.name}{QUALIFIER}{spec.name}":
                raise InvalidSpec(f"plugin {plugin.name} registers layer {spec.name!r} twice")
        self._layers.append(RegisteredLayer(spec, plugin))

    def providers(self, name: str) -> list[RegisteredLayer]:
        """Every registration of the bare name ``name``."""
        return [layer for layer in self if layer.name == name]

    def resolve(self, name: str) -> RegisteredLayer:
        """Find a layer by bare or qualified name, or explain why there is none."""
        if QUALIFIER in name:
            for layer in self:
                if layer.qualified_name == name:
                    return layer
            raise UnknownLayer(self._unknown_message(name))
        providers = self.providers(name)
        if len(providers) == 1:
            return providers[0]
        if providers:
            choices = " or ".join(layer.qualified_name for layer in providers)
            plugins = " and ".join(layer.plugin.name for layer in providers)
            raise AmbiguousLayer(
                f"layer {name!r} is registered by both {plugins}; choose one with {choices}"
            )
        raise UnknownLayer(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        names = sorted({layer.name for layer in self} | {layer.qualified_name for layer in self})
        message = f"unknown layer {name!r}"
        close = difflib.get_close_matches(name, names, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        bare = normalize_name(name.rsplit(QUALIFIER, 1)[-1])
        # The plugins that may provide the name: the one asked for, or one named
        # after the layer (gru, layerport-gru). A looser match blames an unrelated
        # failure for a typo.
        suspects = {bare, f"layerport-{bare}"}
        suspects |= {normalize_name(f.entry_point) for f in self.failures if f.entry_point == bare}
        if QUALIFIER in name:
            suspects.add(normalize_name(name.split(QUALIFIER, 1)[0]))
        for failure in self.failures:
            if normalize_name(failure.plugin) in suspects or failure.entry_point in suspects:
                return f"{message}; plugin {failure.plugin}, which may provide it, failed: {failure.message}"
        if self.failures:
            failed = ", ".join(failure.plugin for failure in self.failures)
            message += f"; some plugins failed to load ({failed}): see 'layerport plugins'"
        return f"{message}; run 'layerport list' to see the layers"


def normalize_name(name: str) -> str:
    """A distribution name as packaging compares them: lowercase, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower().strip()
