"""The layer-type spec: parameter parsing and checking, dims, and spec validation."""

from __future__ import annotations

import dataclasses
import re

import pytest

from layerport import Dim, InvalidParameter, InvalidSpec, LayerSpec, Param, Streaming, Tensor
from layerport.default_plugins.linear import LINEAR
from layerport.default_plugins.rnn import RNN
from layerport.errors import InvalidDim
from layerport.spec.forms import ExportForm

from conftest import tiny_spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [("8", 8), (" 12 ", 12)],
)
def test_int_param_parses(text: str, expected: int) -> None:
    assert LINEAR.param("in_features").parse(text) == expected


@pytest.mark.parametrize("text", ["true", "True", "1", "yes", "on"])
def test_bool_param_parses_true(text: str) -> None:
    assert LINEAR.param("bias").parse(text) is True


@pytest.mark.parametrize("text", ["false", "0", "no", "OFF"])
def test_bool_param_parses_false(text: str) -> None:
    assert LINEAR.param("bias").parse(text) is False


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("in_features", "-3", "parameter in_features must be an integer >= 1, got -3"),
        ("in_features", "0", "parameter in_features must be an integer >= 1, got 0"),
        ("in_features", "eight", "parameter in_features must be an integer >= 1, got 'eight'"),
        ("in_features", "2.5", "parameter in_features must be an integer >= 1, got '2.5'"),
        ("bias", "maybe", "parameter bias must be true or false, got 'maybe'"),
        (
            "activation",
            "gelu",
            "parameter activation must be one of none, sigmoid, tanh, relu, got gelu",
        ),
    ],
)
def test_invalid_param_values_name_the_parameter(name: str, text: str, message: str) -> None:
    with pytest.raises(InvalidParameter) as error:
        LINEAR.param(name).parse(text)
    assert str(error.value) == message


def test_check_rejects_bool_for_int_and_int_for_bool() -> None:
    with pytest.raises(InvalidParameter):
        LINEAR.param("in_features").check(True)
    with pytest.raises(InvalidParameter):
        LINEAR.param("bias").check(1)


def test_float_param_range_and_non_finite() -> None:
    param = Param("dropout", float, 0.0, "p", minimum=0.0, maximum=1.0)
    assert param.parse("0.5") == 0.5
    assert param.check(1) == 1.0
    assert param.allowed() == "a number from 0.0 to 1.0"
    for text in ("1.5", "nan", "inf"):
        with pytest.raises(
            InvalidParameter, match=r"parameter dropout must be a number from 0\.0 to 1\.0"
        ):
            param.parse(text)


def test_resolve_params_overlays_defaults() -> None:
    params = RNN.resolve_params({"hidden_size": "32", "bias": False})
    assert params == {
        "input_size": 128,
        "hidden_size": 32,
        "output_size": 16,
        "nonlinearity": "tanh",
        "bias": False,
    }


def test_unknown_param_suggests_and_lists() -> None:
    with pytest.raises(InvalidParameter) as error:
        LINEAR.resolve_params({"in_feature": "3"})
    assert "unknown parameter 'in_feature' for layer 'linear' (did you mean 'in_features'?)" in str(
        error.value
    )
    assert "parameters: in_features, out_features, bias, activation" in str(error.value)


def test_resolve_dims() -> None:
    assert RNN.resolve_dims({"seq": 5}) == {"batch": 8, "seq": 5}
    with pytest.raises(
        InvalidDim, match="unknown dim 'sq' for layer 'rnn' \\(did you mean 'seq'\\?\\)"
    ):
        RNN.resolve_dims({"sq": 5})
    with pytest.raises(InvalidDim, match="dim 'input_size' of layer 'rnn' is fixed by a parameter"):
        RNN.resolve_dims({"input_size": 5})
    with pytest.raises(InvalidDim, match="dim seq must be an integer >= 1, got 0"):
        RNN.resolve_dims({"seq": 0})


def test_shapes_resolve_from_params_and_dims() -> None:
    params = RNN.resolve_params()
    dims = RNN.resolve_dims()
    assert RNN.shape(RNN.input("x"), params, dims) == (8, 32, 128)
    assert RNN.shape(RNN.outputs[0], params, dims) == (8, 32, 16)
    assert RNN.dynamic_axes(RNN.input("x")) == {0: "batch", 1: "seq"}


def test_grid_has_one_traced_and_a_larger_non_multiple() -> None:
    seq = RNN.dim("seq")
    assert seq.grid(32) == (1, 32, 301)
    assert seq.grid(43) == (1, 43, 302)  # 301 = 7 x 43, so the larger size moves on
    # At or past check_size the larger size doubles, so streaming still has three chunks.
    assert seq.grid(400) == (1, 400, 805)
    assert seq.grid(301) == (1, 301, 607)
    assert Dim("batch", 16).grid(16) == (1, 16, 37)


def test_builtin_weights_match_the_issue() -> None:
    assert LINEAR.weights(LINEAR.resolve_params()) == {"weight": (2, 8), "bias": (2,)}
    assert RNN.weights(RNN.resolve_params({"bias": False})) == {
        "wi.weight": (64, 128),
        "wh.weight": (64, 64),
        "wo.weight": (16, 64),
    }


def _form(name: str) -> ExportForm:
    return ExportForm(name, "a form", refuses=lambda params, dtype: None, translations=dict)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Bad Name"}, "name must be lowercase"),
        ({"name": "a:b"}, "name must be lowercase"),
        ({"description": ""}, "description must be one non-empty line"),
        ({"description": "two\nlines"}, "description must be one non-empty line"),
        ({"build": None}, "build must be callable"),
        ({"inputs": ()}, "at least one input and one output"),
        ({"inputs": (Tensor("x", ("batch", "nope")),)}, "dim 'nope' is neither"),
        ({"params": (Param("width", int, 0, "w", minimum=1),)}, "default is invalid"),
        ({"params": (Param("width", list, [], "w"),)}, "type must be int, float, bool or str"),
        ({"dims": (Dim("batch", 1),)}, "default size must be an integer >= 2"),
        ({"dims": (Dim("batch", 5), Dim("batch", 6))}, "dim names must be unique"),
        ({"outputs": (Tensor("x", ("batch", "3")),)}, "tensor names must be unique"),
        (
            {"inputs": (Tensor("x", ("batch", "width"), optional=True),)},
            "first input cannot be optional",
        ),
        ({"tolerances": {"float8": None}}, "unknown dtype 'float8'"),
        ({"precisions": {"float8": "onnxruntime"}}, "precisions: unknown dtype 'float8'"),
        ({"precisions": {"float16": "tensorrt"}}, "precisions: float16 names runtime 'tensorrt'"),
        ({"precisions": {}}, "precisions must name at least one precision"),
        ({"streaming": Streaming("time", ())}, "streaming dim 'time' is not a dynamic dim"),
        ({"streaming": Streaming("batch", (("h0", "y"),))}, "must both exist"),
        ({"forms": (_form("standard"),)}, "form names must be unique and not 'standard'"),
        ({"forms": (_form("fused"), _form("fused"))}, r"not 'standard', got \['fused', 'fused'\]"),
    ],
)
def test_inconsistent_specs_are_refused(change: dict, message: str) -> None:
    base = tiny_spec()
    fields = {field.name: getattr(base, field.name) for field in dataclasses.fields(base)}
    with pytest.raises(InvalidSpec, match=message):
        type(base)(**{**fields, **change})


def _stateful(*dims: str) -> LayerSpec:
    return LayerSpec(
        name="stateful",
        description="A layer whose state follows torch's layout.",
        build=print,
        weights=dict,
        params=(
            Param("num_layers", int, 2, "layers", minimum=1),
            Param("bidirectional", bool, True, "both ways"),
            Param("hidden_size", int, 5, "hidden", minimum=1),
        ),
        dims=(Dim("batch", 4),),
        inputs=(Tensor("x", ("batch", "hidden_size")),),
        outputs=(Tensor("h", dims),),
    )


def test_a_dim_can_be_a_formula_over_parameters() -> None:
    spec = _stateful("num_layers * (2 if bidirectional else 1)", "batch", "hidden_size")
    shape = spec.shape(spec.outputs[0], spec.resolve_params(), {"batch": 4})
    assert shape == (4, 4, 5)
    one_way = spec.resolve_params({"bidirectional": False, "num_layers": 3})
    assert spec.shape(spec.outputs[0], one_way, {"batch": 7}) == (3, 7, 5)


def test_an_integer_parameter_is_true_unless_zero() -> None:
    # torch's convention for nn.LSTM's proj_size: 0 means no projection.
    spec = LayerSpec(
        name="projected",
        description="A layer whose state may be projected.",
        build=print,
        weights=dict,
        params=(
            Param("hidden_size", int, 5, "hidden", minimum=1),
            Param("proj_size", int, 0, "projection, 0 for none", minimum=0),
        ),
        dims=(Dim("batch", 4),),
        inputs=(Tensor("x", ("batch", "hidden_size")),),
        outputs=(Tensor("h", ("batch", "proj_size if proj_size else hidden_size")),),
    )
    h = spec.outputs[0]
    assert spec.shape(h, spec.resolve_params(), {"batch": 2}) == (2, 5)
    assert spec.shape(h, spec.resolve_params({"proj_size": 3}), {"batch": 2}) == (2, 3)


def test_a_formula_may_take_the_larger_or_smaller_of_its_terms() -> None:
    # A reflection pad needs an input longer than its wider side: max(left, right) + 1.
    spec = _stateful("max(num_layers, hidden_size) + 1", "min(num_layers, 2 * hidden_size)")
    assert spec.shape(spec.outputs[0], spec.resolve_params(), {"batch": 4}) == (6, 2)
    widest = spec.resolve_params({"num_layers": 9})
    assert spec.shape(spec.outputs[0], widest, {"batch": 4}) == (10, 9)


@pytest.mark.parametrize(
    ("formula", "problem"),
    [
        ('__import__("os").getcwd()', "uses Call; formulas take integers, names"),
        ("max(num_layers)", "uses Call"),
        ("abs(num_layers)", "uses Call"),
        ("max(num_layers, key=hidden_size)", "uses Call"),
        ("num_layers ** 2", "uses Pow"),
        ("num_layers * 2.5", "uses Constant"),
        ("width * 2", "uses 'width', which is not an integer or boolean parameter"),
        ("2 if batch else 1", "tests 'batch' with 'if', which is not a boolean or integer"),
        ("num_layers *", "is not a formula"),
    ],
)
def test_formulas_outside_the_whitelist_are_refused(formula: str, problem: str) -> None:
    # Parsed and evaluated node by node: no plugin string ever reaches eval.
    with pytest.raises(InvalidSpec, match=re.escape(problem)):
        _stateful(formula)


def test_an_output_dim_can_be_derived_from_a_dynamic_dim() -> None:
    spec = _stateful("(batch - 1) // 2 + num_layers", "hidden_size")
    assert spec.derived_axes(spec.outputs[0]) == {0: "(batch - 1) // 2 + num_layers"}
    assert spec.shape(spec.outputs[0], spec.resolve_params(), {"batch": 9}) == (6, 5)


def test_an_input_dim_cannot_be_derived_from_a_dynamic_dim() -> None:
    with pytest.raises(
        InvalidSpec, match="uses a dynamic dim; only an output's dims may be derived"
    ):
        LayerSpec(
            name="derived-input",
            description="An input derived from a dim.",
            build=print,
            weights=dict,
            dims=(Dim("batch", 4),),
            inputs=(Tensor("x", ("batch", "batch * 2")),),
            outputs=(Tensor("y", ("batch",)),),
        )


@pytest.mark.parametrize(
    ("min_size", "problem"),
    [
        ("width ** 2", "min_size 'width ** 2' is not a valid formula"),
        ("batch + 1", "uses 'batch', which is not an integer or boolean parameter"),
        ("width * 9", "default size 4 is below its min_size 18"),
        (2.5, "min_size must be an integer or a formula over the parameters"),
    ],
)
def test_bad_smallest_sizes_are_refused(min_size: object, problem: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(problem)):
        LayerSpec(
            name="smallest",
            description="A dim with a smallest size.",
            build=print,
            weights=dict,
            params=(Param("width", int, 2, "width", minimum=1),),
            dims=(Dim("batch", 4, min_size=min_size),),  # type: ignore[arg-type]
            inputs=(Tensor("x", ("batch",)),),
            outputs=(Tensor("y", ("batch",)),),
        )


def test_a_dim_declared_to_take_0_may_be_empty_and_others_may_not() -> None:
    past = Dim("past", 3, min_size=0)
    assert past.smallest({}) == 0 and Dim("seq", 3).smallest({}) == 1
    assert past.grid(3, past.smallest({})) == (0, 3, 11)
    spec = LayerSpec(
        name="cache",
        description="A test layer.",
        build=lambda params: None,  # type: ignore[arg-type, return-value]
        weights=lambda params: {},
        dims=(Dim("seq", 2), past),
        inputs=(Tensor("x", ("seq", "2")), Tensor("past_x", ("past", "2"))),
        outputs=(Tensor("y", ("seq", "2")), Tensor("present_x", ("past + seq", "2"))),
        streaming=Streaming("seq", (("past_x", "present_x"),), grows="past"),
    )
    assert spec.resolve_dims({"past": 0}) == {"seq": 2, "past": 0}
    with pytest.raises(InvalidDim, match="dim seq must be an integer >= 1, got 0"):
        spec.resolve_dims({"seq": 0})


@pytest.mark.parametrize(
    ("streaming", "message"),
    [
        (
            Streaming("seq", (("past_x", "present_x"),), grows="seq"),
            "streaming grows along 'seq', which must be a dynamic dim with min_size 0",
        ),
        (
            Streaming("seq", (("past_x", "past_x_out"),), grows="past"),
            "streaming: past_x_out must have past_x's dims, grown where it grows",
        ),
        (
            Streaming("seq", (), unless="not nosuch"),
            "streaming unless='not nosuch' is not a boolean",
        ),
    ],
)
def test_a_growing_state_is_declared_consistently(streaming: Streaming, message: str) -> None:
    with pytest.raises(InvalidSpec, match=re.escape(message)):
        LayerSpec(
            name="cache",
            description="A test layer.",
            build=lambda params: None,  # type: ignore[arg-type, return-value]
            weights=lambda params: {},
            dims=(Dim("seq", 2), Dim("past", 3, min_size=0)),
            inputs=(Tensor("x", ("seq", "2")), Tensor("past_x", ("past", "2"))),
            outputs=(
                Tensor("y", ("seq", "2")),
                Tensor("present_x", ("past + seq", "2")),
                Tensor("past_x_out", ("past", "2")),
            ),
            streaming=streaming,
        )


def test_unless_not_a_flag_skips_streaming_when_the_flag_is_false() -> None:
    streaming = Streaming("seq", (), unless="not causal")
    assert streaming.applies({"causal": True}) and not streaming.applies({"causal": False})
    assert streaming.skipped_because() == "a layer with causal=false"
    assert Streaming("seq", (), unless="bidirectional").skipped_because() == (
        "a layer with bidirectional=true"
    )
