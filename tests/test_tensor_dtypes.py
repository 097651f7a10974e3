"""Tensors that declare their dtype: int64 ids and a bool mask in, an int64 count out.

The test layer looks ids up in a table, zeroes the rows the mask drops, and
counts the rows kept: through run, export, verify, infer and the Triton config.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import onnx
import pytest

from hostile import assert_refused, assert_succeeded
from layerport import Dim, LayerSpec, Param, Tensor
from layerport.config import resolve_config
from layerport.errors import InvalidSpec, UserInputError
from layerport.plugins import get_registry
from layerport.runtime.arrays import ArraySpec, check_arrays, random_inputs
from layerport.verify.compare import EXACT
from layerport.verify.verification import compare_outputs

from conftest import SpecPlugin


def _build(params):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    class Lookup(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Embedding(int(params["vocab"]), int(params["width"]))

        def forward(self, ids: torch.Tensor, mask: torch.Tensor):  # type: ignore[no-untyped-def]
            kept = mask.unsqueeze(-1).to(self.table.weight.dtype)
            return self.table(ids) * kept, mask.sum(dim=-1)

    return Lookup()


LOOKUP = LayerSpec(
    name="lookup",
    description="A test layer: rows of a table by id, masked, and the count kept.",
    build=_build,
    weights=lambda params: {"table.weight": (int(params["vocab"]), int(params["width"]))},
    params=(
        Param("vocab", int, 10, "rows in the table", minimum=1),
        Param("width", int, 3, "columns", minimum=1),
    ),
    dims=(Dim("batch", 2, "rows"), Dim("seq", 5, "ids per row")),
    inputs=(
        Tensor("ids", ("batch", "seq"), "ids", dtype="int64", high="vocab"),
        Tensor("mask", ("batch", "seq"), "true where kept", dtype="bool"),
    ),
    outputs=(
        Tensor("y", ("batch", "seq", "width"), "masked rows"),
        Tensor("kept", ("batch",), "rows kept", dtype="int64"),
    ),
)


@pytest.fixture
def lookup(register_plugin) -> Iterator[None]:  # type: ignore[no-untyped-def]
    register_plugin(SpecPlugin(LOOKUP), "lookup-plugin")
    yield


def _spec(**tensor: object) -> LayerSpec:
    return LayerSpec(
        name="bad",
        description="d",
        build=_build,
        weights=lambda params: {},
        params=(Param("vocab", int, 10, "rows", minimum=1),),
        dims=(Dim("batch", 2),),
        inputs=(Tensor("x", ("batch",), **tensor),),  # type: ignore[arg-type]
        outputs=(Tensor("y", ("batch",)),),
    )


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"dtype": "int8"}, "dtype 'int8' must be one of float, int64, int32, bool"),
        ({"dtype": "int64"}, "an integer input must declare high"),
        ({"high": "vocab"}, "only an integer tensor has a high bound"),
        ({"dtype": "int64", "high": 0}, "high must be at least 1"),
        ({"dtype": "int64", "high": "vocab + size"}, "uses 'size', which is not an integer"),
    ],
)
def test_a_spec_with_a_bad_tensor_dtype_is_refused(tensor: dict[str, object], message: str):
    with pytest.raises(InvalidSpec, match=message):
        _spec(**tensor)


def test_generated_inputs_are_valid_ids_and_masks(lookup) -> None:  # type: ignore[no-untyped-def]
    config = resolve_config(get_registry(), "lookup", params={"vocab": 4}, dims={"seq": 50})
    inputs = config.random_inputs()
    assert inputs["ids"].dtype == np.int64 and inputs["mask"].dtype == np.bool_
    assert set(np.unique(inputs["ids"])) == {0, 1, 2, 3}
    assert set(np.unique(inputs["mask"])) == {False, True}
    again = config.random_inputs()
    np.testing.assert_array_equal(inputs["ids"], again["ids"])


def test_integers_without_a_range_are_not_generated() -> None:
    with pytest.raises(Exception, match="input ids is int64 and its valid values are unknown"):
        random_inputs({"ids": (2, 3)}, "int64", 0)


def test_check_arrays_refuses_an_id_beyond_the_table_and_a_float_mask() -> None:
    specs = [
        ArraySpec("ids", ("batch",), "int64", values=(0, 10)),
        ArraySpec("mask", ("batch",), "bool"),
    ]
    mask = np.ones(3, dtype=bool)
    with pytest.raises(
        Exception, match=r"input ids holds 10 at \[1\]; its values must be from 0 to 9"
    ):
        check_arrays({"ids": np.array([0, 10, 3]), "mask": mask}, specs)
    with pytest.raises(Exception, match="input mask must be bool, got float32"):
        check_arrays({"ids": np.array([0, 1, 3]), "mask": mask.astype(np.float32)}, specs)
    checked, notes = check_arrays({"ids": np.array([0, 9, 3]), "mask": mask}, specs)
    assert notes == [] and checked["ids"].tolist() == [0, 9, 3]


def test_integer_outputs_are_compared_exactly() -> None:
    expected = {"kept": np.array([3, 4]), "y": np.array([1.0, 2.0])}
    actual = {"kept": np.array([3, 5]), "y": np.array([1.0, 2.0])}
    loose = EXACT.__class__(atol=10.0, rtol=10.0)
    kept, y = compare_outputs("case", expected, actual, loose, ("onnxruntime", "eager"))
    assert not kept.passed and kept.max_abs_error == 1.0 and y.passed


def test_show_names_each_tensors_dtype(lookup, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("show", "lookup", "-p", "vocab=7")
    assert_succeeded(result)
    assert "int64 0..6" in result.stdout and "bool" in result.stdout
    described = json.loads(cli("show", "lookup", "--json").stdout)
    assert [(t["name"], t["dtype"], t["values"]) for t in described["inputs"]] == [
        ("ids", "int64", [0, 10]),
        ("mask", "bool", None),
    ]


def test_run_export_verify_and_infer_with_ids_and_a_mask(lookup, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    run = cli("run", "lookup", "--json")
    assert_succeeded(run)
    assert json.loads(run.stdout)["outputs"]["kept"]["dtype"] == "int64"
    path = tmp_path / "lookup.onnx"
    exported = cli("export", "lookup", "-o", str(path), "--dtype", "float64")
    assert_succeeded(exported)
    model = onnx.load(path)
    types = {
        value.name: value.type.tensor_type.elem_type
        for value in [*model.graph.input, *model.graph.output]
    }
    assert types == {
        "ids": onnx.TensorProto.INT64,
        "mask": onnx.TensorProto.BOOL,
        "y": onnx.TensorProto.DOUBLE,
        "kept": onnx.TensorProto.INT64,
    }
    record = json.loads(cli("inspect", str(path), "--json").stdout)["layerport"]
    assert record["input_ranges"] == {"ids": [0, 10]}
    assert_succeeded(cli("verify", str(path)))
    inferred = cli("infer", str(path), "--dim", "seq=40", "--json")
    assert_succeeded(inferred)
    assert json.loads(inferred.stdout)["outputs"]["y"]["shape"] == [2, 40, 3]
    bad = tmp_path / "bad.npz"
    np.savez(bad, ids=np.array([[1, 12]]), mask=np.array([[True, False]]))
    assert_refused(
        cli("infer", str(path), "--input", str(bad)),
        2,
        "Error: input ids holds 12 at [0, 1]; its values must be from 0 to 9",
    )
    floats = tmp_path / "floats.npz"
    np.savez(floats, ids=np.zeros((1, 2), dtype=np.float32), mask=np.array([[True, False]]))
    assert_refused(
        cli("infer", str(path), "--input", str(floats)),
        2,
        "Error: input ids must be int64, got float32",
    )


def test_the_triton_config_declares_int64_and_bool(lookup, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = cli("export", "lookup", "--target", "triton", "-o", str(tmp_path), "--trials", "1")
    assert_succeeded(result)
    config = (tmp_path / "lookup" / "config.pbtxt").read_text()
    for name, datatype in (("ids", "INT64"), ("mask", "BOOL"), ("y", "FP32"), ("kept", "INT64")):
        assert f'name: "{name}"\n    data_type: TYPE_{datatype}' in config, config


def test_only_a_dim_whose_smallest_size_is_0_may_be_empty() -> None:
    specs = [ArraySpec("past_x", ("batch", "past", 2), "float32")]
    empty = {"past_x": np.zeros((3, 0, 2), np.float32)}
    checked, _ = check_arrays(empty, specs, {"past": 0})
    assert checked["past_x"].shape == (3, 0, 2)
    with pytest.raises(UserInputError, match="input past_x axis 1 is empty"):
        check_arrays(empty, specs)
    with pytest.raises(UserInputError, match="input past_x axis 0 is empty"):
        check_arrays({"past_x": np.zeros((0, 4, 2), np.float32)}, specs, {"past": 0})
