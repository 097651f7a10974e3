"""Property: for any valid configuration, run, export and verify agree.

For parameters and dims drawn within modest bounds, ``layerport export`` (which
verifies against eager PyTorch over its grid) passes, and ``layerport infer`` on
the exported file gives what ``layerport run`` gives, on the same inputs, at the
drawn shape, which may be smaller than the traced one (size 1 included).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import assert_succeeded
from layerport.default_plugins.linear import ACTIVATIONS
from layerport.spec import DEFAULT_TOLERANCES

SETTINGS = settings(
    max_examples=6,
    deadline=None,
    # The cli fixture only captures output; nothing in it carries over between examples.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

rnn_cases = st.fixed_dictionaries(
    {
        "params": st.fixed_dictionaries(
            {
                "input_size": st.integers(1, 8),
                "hidden_size": st.integers(1, 8),
                "output_size": st.integers(1, 4),
                "nonlinearity": st.sampled_from(["tanh", "relu"]),
                "bias": st.booleans(),
            }
        ),
        "dims": st.fixed_dictionaries({"batch": st.integers(1, 5), "seq": st.integers(1, 7)}),
        "dtype": st.sampled_from(["float32", "float64"]),
        "with_h0": st.booleans(),
        "seed": st.integers(0, 2**31),
    }
)
linear_cases = st.fixed_dictionaries(
    {
        "params": st.fixed_dictionaries(
            {
                "in_features": st.integers(1, 16),
                "out_features": st.integers(1, 16),
                "bias": st.booleans(),
                "activation": st.sampled_from(ACTIVATIONS),
            }
        ),
        "dims": st.fixed_dictionaries({"batch": st.integers(1, 5)}),
        "dtype": st.sampled_from(["float32", "float64"]),
        "with_h0": st.just(False),
        "seed": st.integers(0, 2**31),
    }
)


def _inputs(layer: str, case: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    params, dims = case["params"], case["dims"]
    if layer == "linear":
        shapes = {"x": (dims["batch"], params["in_features"])}
    else:
        shapes = {"x": (dims["batch"], dims["seq"], params["input_size"])}
        if case["with_h0"]:
            shapes["h0"] = (dims["batch"], params["hidden_size"])
    return {
        name: rng.standard_normal(shape).astype(case["dtype"]) for name, shape in shapes.items()
    }


def check_run_export_and_infer_agree(cli, layer: str, case: dict) -> None:  # type: ignore[no-untyped-def]
    options = [word for name, value in case["params"].items() for word in ("-p", f"{name}={value}")]
    options += ["--dtype", case["dtype"], "--seed", str(case["seed"])]
    # Exports trace every dynamic dim at 2 or more; the file must still run at 1.
    traced = [f"--dim={name}={max(size, 2)}" for name, size in case["dims"].items()]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        exported = cli(
            "export",
            layer,
            *options,
            *traced,
            "-o",
            str(folder / "m.onnx"),
            "--json",
            "--trials",
            "1",
        )
        assert_succeeded(exported)
        assert json.loads(exported.stdout)["verification"]["passed"] is True

        arrays = _inputs(layer, case, np.random.default_rng(case["seed"]))
        np.savez(folder / "in.npz", **arrays)
        ran = cli(
            "run",
            layer,
            *options,
            "--input",
            str(folder / "in.npz"),
            "--output",
            str(folder / "eager.npz"),
        )
        assert_succeeded(ran)
        inferred = cli(
            "infer",
            str(folder / "m.onnx"),
            "--input",
            str(folder / "in.npz"),
            "--output",
            str(folder / "ort.npz"),
        )
        assert_succeeded(inferred)

        tolerance = DEFAULT_TOLERANCES[case["dtype"]]
        with np.load(folder / "eager.npz") as eager, np.load(folder / "ort.npz") as ort:
            assert sorted(eager.files) == sorted(ort.files)
            for name in eager.files:
                assert ort[name].shape == eager[name].shape
                assert ort[name].dtype == eager[name].dtype == np.dtype(case["dtype"])
                np.testing.assert_allclose(
                    ort[name], eager[name], atol=tolerance.atol, rtol=tolerance.rtol, err_msg=name
                )


@SETTINGS
@given(case=rnn_cases)
def test_rnn_run_export_and_infer_agree(cli, case: dict) -> None:
    check_run_export_and_infer_agree(cli, "rnn", case)


@SETTINGS
@given(case=linear_cases)
def test_linear_run_export_and_infer_agree(cli, case: dict) -> None:
    check_run_export_and_infer_agree(cli, "linear", case)
