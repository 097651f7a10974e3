"""Export forms: other ways a layer's module can be written to ONNX, tried beside the standard one.

A layer's standard export is whatever torch.onnx makes of its ``forward``. An
``ExportForm`` is another graph for the same interface (the same inputs,
outputs, dims and dtypes), typically through a runtime's fused operators. The
module reads ``export_form()`` in ``forward`` to choose its math while it is
traced; torch.onnx then writes its custom ops through the form's
``translations``, and ``finish`` rewrites what they emitted into the runtime's
operators. A form is kept only where it verifies like the standard export and
runs faster (``layerport.pipeline``); the file's record names the form it holds.

Torch-free: ``translations`` and ``finish`` are called only when exporting.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnx

    from layerport.spec import LayerSpec, Params

STANDARD = "standard"
"""The name a file's record gives the export torch.onnx makes of ``forward`` as it is."""


@dataclass(frozen=True)
class ExportForm:
    """One other way to export a layer; see the module's docstring."""

    name: str
    """What the record and the export summary call it. Example: ``"fused"``."""

    description: str
    """One line: the operators it uses and the runtime that has them."""

    refuses: Callable[[Params, str], str | None]
    """``refuses(params, dtype)``: why a layer so configured cannot take this form (a sentence), or ``None``."""

    translations: Callable[[], Mapping[Any, Callable[..., Any]]]
    """``translations()``: torch.onnx's ``custom_translation_table`` for the form's custom ops (imports torch)."""

    finish: Callable[[onnx.ModelProto], None] | None = None
    """``finish(model)``: rewrites, in place, what the translations emitted (placeholder nodes) into the final operators."""


_ACTIVE: contextvars.ContextVar[str | None] = contextvars.ContextVar("export_form", default=None)


def export_form() -> str | None:
    """The name of the form being exported, for a module's ``forward`` to branch on; ``None`` otherwise."""
    return _ACTIVE.get()


@contextlib.contextmanager
def exporting_form(name: str | None) -> Iterator[None]:
    """Within the block, ``export_form()`` is ``name``; a composed model's layers all see it."""
    token = _ACTIVE.set(name)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def composed_forms(layers: Sequence[tuple[str, Params, LayerSpec]]) -> tuple[ExportForm, ...]:
    """The forms of a model composed of ``layers`` (``(name, params, spec)`` each): one per form
    name any layer has, which the layers having it take together.

    The model takes a form where every layer that has it can (``refuses`` names the first
    that cannot); the layers without it export as they are. Its translations are the
    layers' together, and each distinct ``finish`` runs once.
    """
    names = list(dict.fromkeys(form.name for _, _, spec in layers for form in spec.forms))
    return tuple(_composed(name, layers) for name in names)


def _composed(name: str, layers: Sequence[tuple[str, Params, LayerSpec]]) -> ExportForm:
    having = [
        (layer, params, form)
        for layer, params, spec in layers
        for form in spec.forms
        if form.name == name
    ]
    finishes = list(dict.fromkeys(form.finish for _, _, form in having if form.finish))

    def refuses(_: Params, dtype: str) -> str | None:
        for layer, params, form in having:
            refusal = form.refuses(params, dtype)
            if refusal is not None:
                return f"layer {layer}: {refusal}"
        return None

    def translations() -> Mapping[Any, Callable[..., Any]]:
        return {key: value for *_, form in having for key, value in form.translations().items()}

    def finish(model: onnx.ModelProto) -> None:
        for each in finishes:
            each(model)

    return ExportForm(
        name=name,
        description=having[0][2].description,
        refuses=refuses,
        translations=translations,
        finish=finish,
    )
