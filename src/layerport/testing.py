"""The conformance kit: what every layer type must satisfy, for plugin authors' test suites.

Call it from pytest, all at once::

    from layerport.testing import check_layer

    def test_gru_conforms():
        check_layer("gru")

or one check per test, so a failure names what broke::

    import pytest
    from layerport.testing import CHECKS

    @pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
    def test_gru(check):
        check("gru")

Each check raises ``AssertionError`` with a message that says what to fix. The
layer must be registered: installed as a plugin, or registered on
``layerport.plugins.pm`` by the test.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx

from layerport.config import LayerConfig, resolve_config
from layerport.dtypes import element_type_name
from layerport.errors import InvalidParameter, LayerportError
from layerport.plugins import get_registry
from layerport.spec import LayerSpec, Param, ParamValue

if TYPE_CHECKING:
    from torch import nn

    from layerport.results import ExportResult

__all__ = [
    "CHECKS",
    "build_layer",
    "check_declared_precisions_verify",
    "check_defaults_build",
    "check_export_interface",
    "check_export_verifies",
    "check_invalid_params_refused",
    "check_layer",
    "check_same_seed_same_output",
    "check_spec_registered",
    "exported_layer",
]


def check_spec_registered(layer: str) -> None:
    """The layer resolves in the registry, and its plugin loaded without errors."""
    registry = get_registry()
    try:
        registered = registry.resolve(layer)
    except LayerportError as error:
        raise AssertionError(f"layer {layer!r} is not usable: {error}") from error
    assert isinstance(registered.spec, LayerSpec)
    broken = [f for f in registry.failures if f.plugin == registered.plugin.name]
    assert not broken, f"plugin {registered.plugin.name} reported: {broken[0].message}"


def check_defaults_build(layer: str) -> None:
    """The defaults build, and so does every choice and flag of every parameter.

    Each build's weights must match what ``spec.weights`` declares.
    """
    from layerport.eager.build import build_module

    spec = _spec(layer)
    for params in _parameter_variants(spec):
        config = resolve_config(get_registry(), layer, params=params)
        try:
            build_module(config)
        except LayerportError as error:
            raise AssertionError(
                f"{layer} with {params or 'defaults'} does not build: {error}"
            ) from error


def check_invalid_params_refused(layer: str) -> None:
    """Out-of-range, wrongly typed and unknown parameters give ``InvalidParameter`` naming them."""
    spec = _spec(layer)
    cases: list[tuple[str, str]] = [("no_such_parameter", "1")]
    for param in spec.params:
        cases += [(param.name, text) for text in _invalid_texts(param)]
    for name, text in cases:
        try:
            spec.resolve_params({name: text})
        except InvalidParameter as error:
            assert name in str(error), (
                f"the error for {name}={text!r} does not name {name}: {error}"
            )
        else:
            raise AssertionError(f"{layer} accepted the invalid parameter {name}={text!r}")


def check_same_seed_same_output(layer: str) -> None:
    """A forward pass works, gives the declared shapes, and the same seed gives the same result."""
    from layerport.eager.build import run_layer

    config = _config(layer)
    first = run_layer(config, config.random_inputs())
    again = run_layer(config, config.random_inputs())
    other = run_layer(dataclasses.replace(config, seed=config.seed + 1), config.random_inputs())
    for tensor in config.spec.outputs:
        shape = config.shape(tensor)
        assert first[tensor.name].shape == shape, (
            f"output {tensor.name} has shape {first[tensor.name].shape}, the spec declares {shape}"
        )
        np.testing.assert_array_equal(first[tensor.name], again[tensor.name])
    if config.weight_shapes():  # a layer without weights (an activation) has nothing to seed
        assert any(not np.array_equal(first[name], other[name]) for name in first), (
            f"{layer}: a different seed gave identical outputs; does the builder ignore the seed?"
        )


def check_export_verifies(layer: str) -> None:
    """The float32 export passes verification across the shape grid."""
    exported_layer(layer, "float32")


def check_declared_precisions_verify(layer: str) -> None:
    """The export passes verification in every other precision the spec declares.

    Each in the runtime the spec names for it (``LayerSpec.precisions``): a
    precision onnxruntime cannot run is verified in onnx's reference evaluator.
    """
    for dtype in _spec(layer).precisions:
        if dtype != "float32":  # check_export_verifies has it
            exported_layer(layer, dtype)


def check_export_interface(layer: str) -> None:
    """The file's input and output names, element types and symbolic dims are the spec's own."""
    result = exported_layer(layer, "float32")
    model = onnx.load_model_from_string(result.model_bytes)
    spec = result.config.spec
    values = {value.name: value for value in [*model.graph.input, *model.graph.output]}
    assert [v.name for v in model.graph.input] == [t.name for t in spec.inputs]
    assert [v.name for v in model.graph.output] == [t.name for t in spec.outputs]
    for tensor in spec.inputs + spec.outputs:
        element_type = element_type_name(values[tensor.name].type.tensor_type.elem_type)
        assert element_type == result.config.tensor_dtype(tensor), (
            f"{tensor.name} is {element_type} in the file, the spec declares "
            f"{result.config.tensor_dtype(tensor)}"
        )
        dims = values[tensor.name].type.tensor_type.shape.dim
        for axis, name in spec.dynamic_axes(tensor).items():
            assert dims[axis].dim_param == name, (
                f"{tensor.name} axis {axis} should be the symbolic dim {name!r}, "
                f"the file has {dims[axis].dim_param or dims[axis].dim_value!r}"
            )


def build_layer(
    layer: str, params: Mapping[str, object] | None = None, *, dtype: str = "float32", seed: int = 0
) -> nn.Module:
    """Build a layer exactly as layerport does (seeded, cast, eval mode), for oracle tests."""
    from layerport.eager.build import build_module

    return build_module(
        resolve_config(get_registry(), layer, params=params, dtype=dtype, seed=seed)
    )


CHECKS: tuple[Callable[[str], None], ...] = (
    check_spec_registered,
    check_defaults_build,
    check_invalid_params_refused,
    check_same_seed_same_output,
    check_export_verifies,
    check_declared_precisions_verify,
    check_export_interface,
)


def check_layer(layer: str) -> None:
    """Run every check in ``CHECKS`` against ``layer``."""
    for check in CHECKS:
        check(layer)


def _spec(layer: str) -> LayerSpec:
    return get_registry().resolve(layer).spec


def _config(layer: str, dtype: str = "float32") -> LayerConfig:
    return resolve_config(get_registry(), layer, dtype=dtype)


def exported_layer(layer: str, dtype: str = "float32") -> ExportResult:
    """The layer's verified export at its defaults, made once per layer type and dtype.

    The kit's checks share it (exporting takes seconds), and so can an author's
    own tests of the file. Raises ``AssertionError`` when it does not export and
    verify.

    The cache is keyed on the spec object too, so a fixture that registers
    another spec under the same name gets an export of that spec.
    """
    try:
        registered = get_registry().resolve(layer)
    except LayerportError as error:
        raise AssertionError(f"{layer} ({dtype}) does not export and verify: {error}") from error
    return _export_once(registered.qualified_name, dtype, id(registered.spec))


@functools.lru_cache(maxsize=16)
def _export_once(qualified_name: str, dtype: str, spec_id: int) -> ExportResult:
    # spec_id only keys the cache. The cached result holds its spec (through its
    # config), so no other spec can take that id while the entry lives.
    from layerport.pipeline import export_layer

    try:
        return export_layer(_config(qualified_name, dtype))
    except LayerportError as error:
        raise AssertionError(
            f"{qualified_name} ({dtype}) does not export and verify: {error}"
        ) from error


def _parameter_variants(spec: LayerSpec) -> Iterator[dict[str, ParamValue]]:
    yield {}
    for param in spec.params:
        if param.choices is not None:
            yield from ({param.name: choice} for choice in param.choices if choice != param.default)
        elif param.type is bool:
            yield {param.name: not param.default}


def _invalid_texts(param: Param) -> list[str]:
    if param.choices is not None:
        return ["not-one-of-the-choices"]
    if param.type is bool:
        return ["maybe"]
    texts = [] if param.type is str else ["not-a-number"]
    if param.minimum is not None:
        texts.append(str(param.minimum - 1))
    if param.maximum is not None:
        texts.append(str(param.maximum + 1))
    return texts
