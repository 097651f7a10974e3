"""Everything a plugin author needs, from one module.

A plugin declares its layer types, builds their modules and tests them; all of
it is imported from here::

    from layerport.plugin import Dim, LayerSpec, Param, Tensor, hookimpl

The names fall in four groups, and only the first two are imported eagerly,
because ``layerport list`` imports every plugin's module and must stay free of torch:

- **declaring a layer type** (torch-free): ``hookimpl``; the spec's classes
  (``LayerSpec``, ``Param``, ``Dim``, ``Tensor``, ``Streaming``, ``WeightPart``,
  ``Tolerance``), the element types a tensor may declare (``TENSOR_DTYPES``:
  ``Tensor("ids", ("batch", "seq"), dtype="int64", high="num_embeddings")``) and types (``Params``, ``Dims``, ``ParamValue``); the errors a
  spec's functions raise; ``parse_formula`` and ``evaluate`` for the dims'
  formulas (a derived dim's size, computed the way the spec computes it); and torch's recurrent layout, declared once
  (``torch_layout_fields``, ``torch_layout_arguments``, ``STATE_DIMS``,
  ``BATCH_AND_SEQ``, ...: see ``spec.torch_layout``); other export forms
  (``ExportForm``, and ``export_form()`` for ``forward`` to branch on: see
  ``spec.forms``);
- **writing exports** (torch-free, for the ``register_export_targets`` hook):
  ``ExportTarget``, ``TargetOptions``, ``ExportResult`` (what a target
  writes), ``atomic_write_bytes`` and ``check_writable_target``;
- **building the module** (imports torch on first use): the recurrence helper
  ``run_over_time`` and ``run_stacked``, and torch's recurrent weights by
  index (``torch_weight``, ``torch_projection``, ``torch_state_shape``);
- **testing it** (imports torch on first use): the conformance kit
  (``CHECKS``, ``check_layer``, ``build_layer``, ``exported_layer``) and the
  calls its oracle tests make (``resolve_config``, ``build_module``,
  ``run_layer``, ``export_layer``, ``load_model``, ``get_registry``, ``cli``).

Names of the last two groups (and ``ExportResult``) are resolved when first read (PEP 562's
module ``__getattr__``), so ``from layerport.plugin import run_stacked`` inside
a module that builds is what imports torch, and only then.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from layerport.dtypes import TENSOR_DTYPES
from layerport.errors import InvalidParameter, InvalidSpec, UserInputError
from layerport.hookspecs import hookimpl
from layerport.runtime.files import atomic_write_bytes, check_writable_target
from layerport.spec import (
    ALL_PRECISIONS,
    Dim,
    Dims,
    LayerSpec,
    Param,
    Params,
    ParamValue,
    Streaming,
    Tensor,
    Tolerance,
    WeightPart,
)
from layerport.spec.expressions import evaluate, parse_formula
from layerport.spec.forms import ExportForm, export_form
from layerport.spec.torch_layout import (
    BATCH_AND_SEQ,
    GATES,
    OUTPUT_DIMS,
    PROJECTED_OUTPUT_DIMS,
    PROJECTED_STATE_DIMS,
    STATE_DIMS,
    lstm_sizes,
    matmul_flops,
    torch_layout_arguments,
    torch_layout_fields,
    torch_layout_sizes,
    torch_layout_weights,
    torch_reference,
)
from layerport.targets import ExportTarget, TargetOptions

if TYPE_CHECKING:
    from layerport.cli import cli
    from layerport.config import resolve_config
    from layerport.eager.build import build_module, run_layer
    from layerport.eager.recurrence import (
        run_over_time,
        run_stacked,
        torch_projection,
        torch_state_shape,
        torch_weight,
    )
    from layerport.pipeline import export_layer
    from layerport.plugins import get_registry
    from layerport.results import ExportResult
    from layerport.runtime.session import load_model
    from layerport.testing import CHECKS, build_layer, check_layer, exported_layer

# The names that import torch (or the CLI), and the module each comes from.
_LAZY = {
    "run_over_time": "layerport.eager.recurrence",
    "run_stacked": "layerport.eager.recurrence",
    "torch_projection": "layerport.eager.recurrence",
    "torch_state_shape": "layerport.eager.recurrence",
    "torch_weight": "layerport.eager.recurrence",
    "CHECKS": "layerport.testing",
    "build_layer": "layerport.testing",
    "check_layer": "layerport.testing",
    "exported_layer": "layerport.testing",
    "resolve_config": "layerport.config",
    "build_module": "layerport.eager.build",
    "run_layer": "layerport.eager.build",
    "export_layer": "layerport.pipeline",
    "get_registry": "layerport.plugins",
    "load_model": "layerport.runtime.session",
    "cli": "layerport.cli",
    "ExportResult": "layerport.results",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ALL_PRECISIONS",
    "BATCH_AND_SEQ",
    "CHECKS",
    "GATES",
    "OUTPUT_DIMS",
    "PROJECTED_OUTPUT_DIMS",
    "PROJECTED_STATE_DIMS",
    "STATE_DIMS",
    "TENSOR_DTYPES",
    "Dim",
    "Dims",
    "ExportForm",
    "ExportResult",
    "ExportTarget",
    "InvalidParameter",
    "InvalidSpec",
    "LayerSpec",
    "Param",
    "ParamValue",
    "Params",
    "Streaming",
    "TargetOptions",
    "Tensor",
    "Tolerance",
    "UserInputError",
    "WeightPart",
    "atomic_write_bytes",
    "build_layer",
    "build_module",
    "check_layer",
    "check_writable_target",
    "cli",
    "evaluate",
    "export_form",
    "export_layer",
    "exported_layer",
    "get_registry",
    "hookimpl",
    "load_model",
    "lstm_sizes",
    "matmul_flops",
    "parse_formula",
    "resolve_config",
    "run_layer",
    "run_over_time",
    "run_stacked",
    "torch_layout_arguments",
    "torch_layout_fields",
    "torch_layout_sizes",
    "torch_layout_weights",
    "torch_projection",
    "torch_reference",
    "torch_state_shape",
    "torch_weight",
]
