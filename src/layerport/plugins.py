"""The plugin manager: built-in plugins, entry-point plugins, and their isolation.

Built-in layer types are ordinary plugins listed in ``DEFAULT_PLUGINS`` and take
the same path as third-party ones. Third-party plugins are distributions with an
entry point in the ``layerport`` group. Each one loads on its own: a plugin that
fails to import, registers a misspelled hook or raises in its hook is recorded
as a ``PluginFailure`` and every other plugin keeps working. An object reached
through several entry points is registered once, under the first.

``LAYERPORT_LOAD_PLUGINS`` selects plugins: a comma-separated list of
distribution names loads only those; an empty value loads only the built-ins.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from layerport import __version__, hookspecs
from layerport.errors import InvalidSpec, PluginFailed, is_interrupt, one_line
from layerport.registry import PluginFailure, PluginInfo, Registry, normalize_name

if TYPE_CHECKING:
    from layerport.targets import ExportTarget

DEFAULT_PLUGINS = (
    "layerport.default_plugins.linear",
    "layerport.default_plugins.rnn",
    "layerport.default_plugins.onnx_file",
    "layerport.default_plugins.triton",
    "layerport.default_plugins.commands",
)
ENTRY_POINT_GROUP = "layerport"
BUILTIN = PluginInfo(name="layerport", version=__version__)

pm = pluggy.PluginManager("layerport")
pm.add_hookspecs(hookspecs)

HOOK_NAMES = tuple(
    name for name, value in vars(hookspecs).items() if hasattr(value, "layerport_spec")
)

# The distribution behind each plugin that registered, by its pluggy name.
_plugin_info: dict[str, PluginInfo] = {}
# The entry points read for each distribution, by its name, in order.
_entry_point_names: dict[str, list[str]] = {}
_load_failures: list[PluginFailure] = []
_warnings: list[str] = []
_loaded = False
_commands_loaded = False


def load_plugins(*, strict: bool = False) -> None:
    """Register the built-in and installed plugins, once per process.

    With ``strict`` (the CLI's ``--debug``), a broken plugin raises its original
    error instead of being recorded.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        register_plugin(importlib.import_module(module_name), module_name, BUILTIN)
    for entry_point in _selected_entry_points():
        info = _plugin_info_for(entry_point)
        names = _entry_point_names.setdefault(info.name, [])
        if entry_point.name not in names:
            names.append(entry_point.name)
        try:
            plugin = entry_point.load()
        except BaseException as error:
            _contain(error, strict)
            failure = _failure(info.name, f"cannot load entry point {entry_point.value!r}", error)
            _load_failures.append(replace(failure, entry_point=entry_point.name))
            continue
        problem = _not_a_plugin(plugin)
        if problem:
            message = f"entry point '{entry_point.name} = {entry_point.value}' {problem}"
            if strict:
                raise InvalidSpec(message)
            _load_failures.append(
                PluginFailure(info.name, message, InvalidSpec(message), entry_point.name)
            )
            continue
        name = f"{info.name}:{entry_point.name}"
        if _registered_before(plugin, name, entry_point, info):
            continue
        try:
            register_plugin(plugin, name, info)
        except BaseException as error:
            _contain(error, strict)
            failure = _failure(
                info.name, f"cannot register entry point {entry_point.value!r}", error
            )
            _load_failures.append(replace(failure, entry_point=entry_point.name))
    pm.check_pending()


def _contain(error: BaseException, strict: bool) -> None:
    """Let an interrupt through; with ``strict``, raise the plugin's error; else return.

    ``SystemExit`` from a plugin is its failure, never layerport's exit: under
    ``strict`` it is raised as ``PluginFailed``, so ``--debug`` shows its traceback
    and layerport still reports it in one line.
    """
    if is_interrupt(error):
        raise error
    if strict:
        if isinstance(error, Exception):
            raise error
        raise PluginFailed(
            f"a plugin raised {type(error).__name__}: {_error_text(error)}"
        ) from error


def _registered_before(
    plugin: Any, name: str, entry_point: metadata.EntryPoint, info: PluginInfo
) -> bool:
    """Whether an earlier entry point registered ``plugin``, or ``info``'s copy of ``name``.

    The same object is often reached twice: two entry points of one distribution
    (an alias kept for old configurations), or one distribution on the path twice
    (an editable and a regular install). pluggy refuses a second registration with
    a message full of module reprs, so the object stays registered once, under
    the first entry point, and the first copy on the path wins, as it does for
    ``import``. Only where another distribution registered the object first is
    there something to tell: which distribution's registration is used.
    """
    if not pm.is_registered(plugin):
        return pm.has_plugin(name)
    owner = plugin_info(plugin)
    if normalize_name(owner.name) != normalize_name(info.name):
        _warn_once(
            f"plugins {owner.name} and {info.name} both provide {entry_point.value}; "
            f"using it from {owner.name}"
        )
    return True


def _not_a_plugin(plugin: Any) -> str | None:
    """Why an entry point's object cannot be a layerport plugin, or ``None`` if it can.

    pluggy registers any object and quietly finds no hooks on one that has none
    (or fails to hash it, for a dataclass holding a dict), so this is checked
    first, in words a plugin author can act on.
    """
    marked = [
        name for name in dir(plugin) if hasattr(getattr(plugin, name, None), "layerport_impl")
    ]
    if marked:
        return None
    unmarked = [name for name in HOOK_NAMES if callable(getattr(plugin, name, None))]
    if unmarked:
        return (
            f"defines {unmarked[0]} but does not mark it @hookimpl (from layerport import hookimpl)"
        )
    kind = type(plugin).__name__
    hint = (
        "; register it from a register_layers hook in that module, and point the entry "
        "point at the module"
        if kind in ("LayerSpec", "ExportTarget")
        else "; point the entry point at a module or class whose hooks are marked @hookimpl"
    )
    return f"names a {kind}, which implements no layerport hook ({', '.join(HOOK_NAMES)}){hint}"


def register_plugin(plugin: Any, name: str, info: PluginInfo) -> None:
    """Register ``plugin`` under ``name``, as provided by the distribution ``info``.

    Raises ``pluggy.PluginValidationError`` for a hook with no hookspec (a
    misspelling), naming every hook; the plugin is then not registered.
    """
    # pluggy validates hook arguments on register; a hook with no spec only
    # surfaces in check_pending(), which names no distribution, so check here.
    pm.register(plugin, name=name)
    unknown = [caller.name for caller in pm.get_hookcallers(plugin) or [] if caller.spec is None]
    if unknown:
        pm.unregister(plugin)
        raise pluggy.PluginValidationError(
            plugin, f"unknown hook {unknown[0]!r}; hooks: {', '.join(HOOK_NAMES)}"
        )
    _plugin_info[name] = info


def _selected_entry_points() -> list[metadata.EntryPoint]:
    entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    selection = os.environ.get("LAYERPORT_LOAD_PLUGINS")
    if selection is None:
        return entry_points
    wanted = {normalize_name(name) for name in selection.split(",") if name.strip()}
    installed = {normalize_name(_distribution_name(entry_point)) for entry_point in entry_points}
    for name in sorted(wanted - installed):
        _warnings.append(f"LAYERPORT_LOAD_PLUGINS names {name!r}, which is not an installed plugin")
    return [ep for ep in entry_points if normalize_name(_distribution_name(ep)) in wanted]


def _plugin_info_for(entry_point: metadata.EntryPoint) -> PluginInfo:
    dist = entry_point.dist
    if dist is None:
        return PluginInfo(name=entry_point.name, version="unknown")
    return PluginInfo(name=dist.metadata["Name"], version=dist.version)


def unregister_plugin(plugin: Any) -> None:
    """Undo ``register_plugin``: the plugin and what is known of its distribution go."""
    name = pm.get_name(plugin)
    pm.unregister(plugin)
    _plugin_info.pop(name or "", None)


def _distribution_name(entry_point: metadata.EntryPoint) -> str:
    return entry_point.dist.metadata["Name"] if entry_point.dist else entry_point.name


def _failure(plugin: str, what: str, error: BaseException) -> PluginFailure:
    detail = _error_text(error)
    message = f"{what}: {type(error).__name__}" + (f": {detail}" if detail else "")
    return PluginFailure(plugin=plugin, message=message, error=error)


_MODULE_REPR = re.compile(r"<module '([^']+)'[^>]*>")


def _error_text(error: BaseException) -> str:
    """A plugin's error in one line, without the environment's file paths or module reprs.

    An ``ImportError`` ends with the path of the module it searched, and an error
    that shows a module shows ``<module 'name' from '/path'>``; the module's name
    says as much to the user, and the path is noise (``--debug`` has it all).
    """
    text = str(error)
    if isinstance(error, ImportError) and error.path:
        text = text.replace(f" ({error.path})", "")
    return one_line(_MODULE_REPR.sub(r"module \1", text))


def plugin_info(plugin: Any) -> PluginInfo:
    """The distribution behind a registered plugin object.

    A plugin registered directly with ``pm.register`` (as tests do) is known by
    its pluggy name.
    """
    name = pm.get_name(plugin)
    if name in _plugin_info:
        return _plugin_info[name]
    return PluginInfo(
        name=name or getattr(plugin, "__name__", None) or type(plugin).__name__,
        version="unknown",
    )


def entry_point_names(distribution: str) -> list[str]:
    """The names of ``distribution``'s entry points, aliases included; none for a built-in."""
    return list(_entry_point_names.get(distribution, []))


def warnings() -> list[str]:
    """Problems worth telling the user that broke no plugin."""
    return list(_warnings)


def call_hook_per_plugin(
    hook_name: str,
    kwargs_for: Callable[[Any], dict[str, Any]],
    failures: list[PluginFailure],
    *,
    strict: bool = False,
) -> list[Any]:
    """Call ``hook_name`` on each plugin separately, so one failure stays contained.

    ``pm.hook.<name>(...)`` would stop at the first plugin that raises; calling
    the implementations one at a time records the failure in ``failures`` and
    carries on. ``kwargs_for(plugin)`` gives each plugin its arguments. Returns
    the plugins whose implementation succeeded, in registration order.
    """
    succeeded = []
    for implementation in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        kwargs = kwargs_for(implementation.plugin)
        info = plugin_info(implementation.plugin)
        try:
            returned = implementation.function(*(kwargs[name] for name in implementation.argnames))
        except BaseException as error:
            _contain(error, strict)
            failures.append(_failure(info.name, f"its {hook_name} hook raised", error))
            continue
        if returned is not None:
            # register_layers(register) that returns its specs instead of calling
            # register(spec) would otherwise provide nothing, and pass as "ok".
            message = (
                f"its {hook_name} hook returned a {type(returned).__name__}; "
                "hooks return nothing, they call the function they are given"
            )
            if strict:
                raise InvalidSpec(message)
            failures.append(PluginFailure(info.name, message, InvalidSpec(message)))
            continue
        succeeded.append(implementation.plugin)
    return succeeded


def get_registry(*, strict: bool = False) -> Registry:
    """A registry of every layer type the loaded plugins provide.

    It is built afresh on each call (the hooks are cheap), so a plugin registered
    or unregistered with ``pm`` at run time, as tests do, is always reflected.
    """
    load_plugins(strict=strict)
    registry = Registry()
    hook_failures: list[PluginFailure] = []
    specs_by_plugin: dict[int, list[Any]] = {}

    def register_argument(plugin: Any) -> dict[str, Any]:
        specs_by_plugin[id(plugin)] = []
        return {"register": specs_by_plugin[id(plugin)].append}

    for plugin in call_hook_per_plugin(
        "register_layers", register_argument, hook_failures, strict=strict
    ):
        # A plugin's layers are committed only if all of them are valid, so a
        # plugin that fails halfway provides nothing rather than half its layers.
        info = plugin_info(plugin)
        staged = Registry()
        try:
            for spec in specs_by_plugin[id(plugin)]:
                staged.register(spec, info)
        except BaseException as error:
            _contain(error, strict)
            hook_failures.append(_failure(info.name, "it registered an invalid layer", error))
            continue
        for layer in staged:
            registry.register(layer.spec, layer.plugin)
    registry.failures = _load_failures + hook_failures
    return registry


def get_export_targets(*, strict: bool = False) -> dict[str, ExportTarget]:
    """Every export target the loaded plugins provide, by name.

    A plugin whose hook raises, or which registers a name already taken, is
    recorded among the registry's failures and provides no target.
    """
    from layerport.targets import ExportTarget

    load_plugins(strict=strict)
    targets: dict[str, ExportTarget] = {}
    registered: dict[int, list[Any]] = {}

    def register_argument(plugin: Any) -> dict[str, Any]:
        registered[id(plugin)] = []
        return {"register": registered[id(plugin)].append}

    failures: list[PluginFailure] = []
    for plugin in call_hook_per_plugin(
        "register_export_targets", register_argument, failures, strict=strict
    ):
        info = plugin_info(plugin)
        for target in registered[id(plugin)]:
            if not isinstance(target, ExportTarget) or target.name in targets:
                problem = (
                    f"register() takes an ExportTarget, got {type(target).__name__}"
                    if not isinstance(target, ExportTarget)
                    else f"export target {target.name!r} is registered twice"
                )
                if strict:
                    raise InvalidSpec(problem)
                _warn_once(f"plugin {info.name}: {problem}")
                continue
            targets[target.name] = target
    for failure in failures:
        _warn_once(f"plugin {failure.plugin} is disabled: {failure.message}")
    return targets


def _warn_once(message: str) -> None:
    if message not in _warnings:
        _warnings.append(message)


def load_plugin_commands(cli: Any, *, strict: bool = False) -> None:
    """Let plugins add subcommands to ``cli`` through the ``register_commands`` hook, once."""
    global _commands_loaded
    if _commands_loaded:
        return
    _commands_loaded = True
    load_plugins(strict=strict)
    call_hook_per_plugin(
        "register_commands", lambda plugin: {"cli": cli}, _load_failures, strict=strict
    )


def loaded_plugins() -> list[PluginInfo]:
    """Every plugin that registered successfully, built-ins first, without repeats."""
    seen: dict[str, PluginInfo] = {}
    for plugin in pm.get_plugins():
        info = plugin_info(plugin)
        seen.setdefault(info.name, info)
    return sorted(seen.values(), key=lambda info: (info is not BUILTIN, info.name))
