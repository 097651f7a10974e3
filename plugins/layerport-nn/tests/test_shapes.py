"""Pads, permutes, reshapes and the activations per layout, against torch's own modules.

Each file is exported at its parameters and run in onnxruntime at sizes it was
not traced at (the layers are traced at batch 4 and length 16, seq 10, height
8 or width 6); each output is compared with the torch module built
independently, and its derived dims are read from the file: symbolic, named by
their formulas. The image classifier chain of issue 23 (conv2d, batchnorm2d,
relu, maxpool2d, flatten, linear, sigmoid) runs file after file against the
same ``nn.Sequential``.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from test_nn import activation_oracle
from torch import nn
from torch.nn import functional

from layerport.plugin import build_layer, get_registry, load_model, resolve_config
from layerport.plugin import cli as layerport_cli


def _cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(layerport_cli, list(args))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "layerport", *args], capture_output=True, text=True
    )


def _export(tmp_path: Path, layer: str, params: dict[str, object], *flags: str) -> Path:
    """Export ``layer`` with ``params`` (and ``flags``, such as ``--weights``); the file's path.

    Not verified: the tests compare the file with torch's module themselves, and
    ``test_show_export_and_verify_from_the_cli`` verifies each layer.
    """
    path = tmp_path / f"{layer}.onnx"
    settings = [
        word for name, value in params.items() for word in ("-p", f"{name}={value}".lower())
    ]
    result = _cli("export", layer, *settings, *flags, "-o", str(path), "--no-verify")
    assert result.exit_code == 0, result.output
    return path


def _normal(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _expected(module: Callable[..., torch.Tensor], x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _input_dims(path: Path) -> list[onnx.TensorShapeProto.Dimension]:
    return list(onnx.load(path).graph.input[0].type.tensor_type.shape.dim)


def _output_dims(path: Path) -> list[str | int]:
    dims = onnx.load(path).graph.output[0].type.tensor_type.shape.dim
    return [dim.dim_param or dim.dim_value for dim in dims]


PADS = [
    ("constantpad1d", {"left": 3, "right": 0, "value": -1.5}, nn.ConstantPad1d((3, 0), -1.5),
     [(3, 4, 23), (1, 4, 1)]),
    ("reflectionpad1d", {"left": 1, "right": 4}, nn.ReflectionPad1d((1, 4)),
     [(3, 4, 23), (2, 4, 5)]),
    ("replicationpad1d", {"left": 5, "right": 2}, nn.ReplicationPad1d((5, 2)),
     [(3, 4, 23), (2, 4, 1)]),
    ("constantpad2d", {"left": 1, "right": 2, "top": 0, "bottom": 3, "value": 0.25},
     nn.ConstantPad2d((1, 2, 0, 3), 0.25), [(3, 4, 11, 19), (1, 4, 1, 2)]),
    ("reflectionpad2d", {"left": 2, "right": 1, "top": 3, "bottom": 1},
     nn.ReflectionPad2d((2, 1, 3, 1)), [(3, 4, 11, 19), (2, 4, 4, 3)]),
    ("replicationpad2d", {"left": 0, "right": 4, "top": 2, "bottom": 1},
     nn.ReplicationPad2d((0, 4, 2, 1)), [(3, 4, 11, 19), (2, 4, 1, 1)]),
]  # fmt: skip


@pytest.mark.parametrize(("layer", "params", "oracle", "shapes"), PADS, ids=[p[0] for p in PADS])
def test_pads_match_torch_asymmetric_at_untraced_sizes(
    tmp_path, layer, params, oracle, shapes
) -> None:
    path = _export(tmp_path, layer, params)
    session = load_model(path)
    for shape in shapes:  # the second is each dim's smallest
        x = _normal(*shape)
        expected = _expected(oracle, x)
        y = session.run({"x": x})["y"]
        assert y.shape == expected.shape
        np.testing.assert_array_equal(y, expected)
    sides = [("left", "right")] if layer.endswith("1d") else [("top", "bottom"), ("left", "right")]
    dims = ["length"] if layer.endswith("1d") else ["height", "width"]
    assert _output_dims(path)[2:] == [
        f"{params[before]} + {dim} + {params[after]}"
        for (before, after), dim in zip(sides, dims, strict=True)
    ]


def test_reflection_needs_an_input_longer_than_its_wider_side(tmp_path) -> None:
    message = (
        "Error: dim width of layer 'reflectionpad2d' must be at least 5, got 4 (its smallest "
        "size is max(left, right) + 1, with left=4, right=1); set it with --dim width=5"
    )
    result = _run("run", "reflectionpad2d", "-p", "left=4", "--dim", "width=4")
    assert result.returncode == 2 and result.stderr.strip() == message, result.stderr
    assert _run("run", "reflectionpad2d", "-p", "left=4", "--dim", "width=5").returncode == 0
    path = _export(tmp_path, "reflectionpad1d", {"right": 3})
    inferred = _run("infer", str(path), "--dim", "length=3")
    assert inferred.returncode == 2
    assert "dim length is 3 in input x, but must be at least 4" in inferred.stderr
    # torch itself refuses it: the minimum is torch's rule, not a guess.
    with pytest.raises(RuntimeError):
        nn.ReflectionPad1d((0, 3))(torch.zeros(1, 1, 3))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("constantpad1d", "-p", "left=-1"), "parameter left must be an integer >= 0, got -1"),
        (("reflectionpad2d", "-p", "value=1"), "unknown parameter 'value' for layer"),
        (("constantpad2d", "-p", "value=x"), "parameter value must be a number, got 'x'"),
        (("reshape_split", "-p", "parts=5"), "features=16 is not divisible by parts=5"),
        (("activation2d", "-p", "dim=seq"), "parameter dim must be one of batch, channels, "
         "height, width, got seq"),
        (("activation1d", "-p", "function=softmax", "-p", "dim=features"),
         "parameter dim must be one of batch, channels, length, got features"),
    ],
)  # fmt: skip
def test_bad_params_exit_2_with_one_line(arguments: tuple[str, ...], message: str) -> None:
    result = _run("run", *arguments)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


RESHAPES = [
    ("permute_to_channels", {"features": 6}, lambda x: x.transpose(1, 2), (3, 29, 6),
     ["batch", 6, "seq"]),
    ("permute_to_tokens", {"channels": 5}, lambda x: x.permute(0, 2, 1), (3, 5, 37),
     ["batch", "length", 5]),
    ("reshape_split", {"features": 12, "parts": 3}, nn.Unflatten(-1, (3, 4)), (2, 31, 12),
     ["batch", "seq", 3, 4]),
    ("reshape_merge", {"parts": 3, "part_size": 5}, nn.Flatten(2), (2, 31, 3, 5),
     ["batch", "seq", 15]),
    ("flatten1d", {"channels": 3}, nn.Flatten(), (5, 3, 43), ["batch", "3 * length"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("layer", "params", "oracle", "shape", "dims"), RESHAPES, ids=[r[0] for r in RESHAPES]
)
def test_permutes_and_reshapes_match_torch(tmp_path, layer, params, oracle, shape, dims) -> None:
    path = _export(tmp_path, layer, params)
    x = _normal(*shape)
    y = load_model(path).run({"x": x})["y"]
    np.testing.assert_array_equal(y, _expected(oracle, x))
    assert _output_dims(path) == dims


def test_a_conv1d_is_fed_from_tokens_and_back(tmp_path) -> None:
    # embedding -> (batch, seq, 6) -> conv1d over seq -> (batch, 6, length') -> tokens again.
    conv = nn.Conv1d(6, 8, 3, padding=1).eval()
    checkpoint = tmp_path / "conv.pt"
    torch.save(conv.state_dict(), checkpoint)
    files = [
        _export(tmp_path, "permute_to_channels", {"features": 6}),
        _export(tmp_path, "conv1d", {"padding": 1}, "--weights", str(checkpoint)),
        _export(tmp_path, "permute_to_tokens", {"channels": 8}),
    ]
    tokens = _normal(3, 23, 6)
    value = tokens
    for path in files:
        value = load_model(path).run({"x": value})["y"]
    np.testing.assert_allclose(value, _expected(lambda x: conv(x.transpose(1, 2)).transpose(1, 2),
                                                tokens), atol=1e-5)  # fmt: skip


LAYOUTS = [
    ("activation0d", (3, 16), 1),
    ("activation1d", (3, 4, 29), 2),
    ("activation2d", (3, 4, 11, 13), 3),
]


@pytest.mark.parametrize(
    "function",
    [
        # One implementation for every layout: the layout matters to softmax's axis,
        # and the elementwise ones are tested on tokens by test_nn; here, slow.
        *(
            pytest.param(function, marks=pytest.mark.slow)
            for function in ("relu", "leaky_relu", "gelu", "silu", "tanh", "sigmoid")
        ),
        "softmax",
        "log_softmax",
    ],
)
@pytest.mark.parametrize(("layer", "shape", "axis"), LAYOUTS, ids=[lay[0] for lay in LAYOUTS])
def test_activations_per_layout_match_torch_functional(
    tmp_path, layer: str, shape: tuple[int, ...], axis: int, function: str
) -> None:
    # softmax over the layout's last dim: dynamic (length, width) but for rows.
    dim = {"activation0d": "features", "activation1d": "length", "activation2d": "width"}[layer]
    params: dict[str, object] = {"function": function, "dim": dim, "negative_slope": 0.2}
    path = _export(tmp_path, layer, params)
    x = _normal(*shape) * 4
    y = load_model(path).run({"x": x})["y"]
    np.testing.assert_allclose(y, _expected(activation_oracle(function, axis), x), atol=2e-6)


def test_softmax_over_the_channels_is_the_images_default(tmp_path) -> None:
    path = _export(tmp_path, "activation2d", {"function": "softmax"})
    x = _normal(2, 4, 9, 7)
    y = load_model(path).run({"x": x})["y"]
    np.testing.assert_allclose(y, _expected(nn.Softmax2d(), x), atol=2e-6)


def _trained_classifier() -> nn.Sequential:
    """The issue's chain, with running statistics and a learned affine, as trained."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, (3, 5), padding=(1, 2)),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 6 * 5, 1),
        nn.Sigmoid(),
    )
    model.train()
    with torch.no_grad():
        for step in range(3):
            model(torch.randn(16, 3, 12, 10) * (step + 1))
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_the_image_classifier_chain_runs_file_after_file_like_nn_sequential(tmp_path) -> None:
    model = _trained_classifier()
    checkpoint = tmp_path / "classifier.pt"
    torch.save(model.state_dict(), checkpoint)
    weights = ("--weights", str(checkpoint), "--weights-prefix")
    files = [
        _export(tmp_path, "conv2d", {"padding_height": 1, "padding_width": 2}, *weights, "0."),
        _export(tmp_path, "batchnorm2d", {}, *weights, "1."),
        _export(tmp_path, "activation2d", {"channels": 8, "function": "relu"}),
        _export(tmp_path, "maxpool2d", {"channels": 8}),
        _export(tmp_path, "flatten", {"channels": 8}),
        _export(tmp_path, "linear", {}, *weights, "5."),
        _export(tmp_path, "activation0d", {"features": 1, "function": "sigmoid"}),
    ]
    # Each layer's output fits the next one's input: the same rank, the same fixed sizes.
    for earlier, later in itertools.pairwise(files):
        produced = _output_dims(earlier)
        taken = [dim.dim_param or dim.dim_value for dim in _input_dims(later)]
        assert len(produced) == len(taken), (earlier.name, later.name)
        for made, wanted in zip(produced, taken, strict=True):
            assert not (isinstance(made, int) and isinstance(wanted, int)) or made == wanted
    images = _normal(9, 3, 12, 10)  # batch 9: traced at 2 (conv2d) and 4
    value = images
    for path in files:
        value = load_model(path).run({"x": value})["y"]
    np.testing.assert_allclose(value, _expected(model, images), atol=1e-5)


NEW_LAYERS = [
    "activation0d", "activation1d", "activation2d", "constantpad1d", "reflectionpad1d",
    "replicationpad1d", "constantpad2d", "reflectionpad2d", "replicationpad2d",
    "permute_to_channels", "permute_to_tokens", "reshape_split", "reshape_merge", "flatten1d",
]  # fmt: skip


@pytest.mark.parametrize("layer", NEW_LAYERS)
def test_spec_reference_agrees_with_the_module(layer: str) -> None:
    config = resolve_config(get_registry(), layer, dtype="float64", dims={"batch": 3})
    module = build_layer(layer, dtype="float64")
    spec = config.spec
    assert spec.reference is not None
    x = torch.from_numpy(config.random_inputs()["x"])
    with torch.no_grad():
        torch.testing.assert_close(module(x), spec.reference(module)(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer", NEW_LAYERS)
def test_show_export_and_verify_from_the_cli(tmp_path, layer: str) -> None:
    assert _run("show", layer).returncode == 0
    path = tmp_path / f"{layer}.onnx"
    exported = _run("export", layer, "-o", str(path), "--trials", "1")
    assert exported.returncode == 0, exported.stderr
    verified = _run("verify", str(path))
    assert verified.returncode == 0, verified.stderr
    assert "passed" in verified.stdout


CLASSIFIER = """\
[model]
name = "classifier"

[inputs.image]
shape = ["batch", 3, 12, 10]

[[layer]]
name = "conv"
use = "conv2d"
weights = "0."
params = { padding_height = 1, padding_width = 2 }   # the kernel, 3x5, is the weights'

[[layer]]
name = "norm"
use = "batchnorm2d"
weights = "1."

[[layer]]
name = "relu"
use = "activation2d"

[[layer]]
name = "pool"
use = "maxpool2d"

[[layer]]
name = "flat"
use = "flatten"

[[layer]]
name = "head"
use = "linear"
weights = "5."

[[layer]]
name = "sigmoid"
use = "activation0d"
params = { function = "sigmoid" }
"""


def test_the_image_classifier_as_a_model_file_equals_nn_sequential(tmp_path) -> None:
    model = _trained_classifier()
    torch.save(model.state_dict(), tmp_path / "classifier.pt")
    (tmp_path / "classifier.toml").write_text(CLASSIFIER)
    path = tmp_path / "classifier.onnx"
    result = _cli("export", str(tmp_path / "classifier.toml"), "--weights",
                  str(tmp_path / "classifier.pt"), "-o", str(path))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "verification: passed" in result.output
    session = load_model(path)
    for batch in (1, 5, 13):
        images = _normal(batch, 3, 12, 10, seed=batch)
        (y,) = session.run({"image": images}).values()
        np.testing.assert_allclose(y, _expected(model, images), atol=1e-5)


class _Tokens(nn.Module):
    """Embedding, a convolution over the sequence, a reflection pad, back to tokens, a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(30, 6)
        self.conv = nn.Conv1d(6, 8, 3)
        self.norm = nn.LayerNorm(8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        channels = self.conv(self.embed(ids).transpose(1, 2))
        padded = functional.pad(functional.gelu(channels), (2, 0), mode="reflect")
        return self.norm(padded.transpose(1, 2))


TOKENS_MODEL = """\
[model]
name = "tokens"

[inputs.ids]
dtype = "int64"
shape = ["batch", "seq"]

[[layer]]
name = "embed"
use = "embedding"
weights = "embed."

[[layer]]
name = "to_channels"
use = "permute_to_channels"

[[layer]]
name = "conv"
use = "conv1d"
weights = "conv."

[[layer]]
name = "gelu"
use = "activation1d"
params = { function = "gelu" }

[[layer]]
name = "pad"
use = "reflectionpad1d"
params = { left = 2, right = 0 }

[[layer]]
name = "to_tokens"
use = "permute_to_tokens"

[[layer]]
name = "norm"
use = "layernorm"
weights = "norm."
"""


def test_a_token_model_through_channels_and_back_runs_at_untraced_lengths(tmp_path) -> None:
    torch.manual_seed(0)
    model = _Tokens().eval()
    torch.save(model.state_dict(), tmp_path / "tokens.pt")
    (tmp_path / "tokens.toml").write_text(TOKENS_MODEL)
    path = tmp_path / "tokens.onnx"
    result = _cli("export", str(tmp_path / "tokens.toml"), "--weights",
                  str(tmp_path / "tokens.pt"), "-o", str(path))  # fmt: skip
    assert result.exit_code == 0, result.output
    session = load_model(path)
    # The conv leaves seq - 2 positions and the reflection needs 3: seq from 5.
    for seq in (5, 17, 60):
        ids = np.random.default_rng(seq).integers(0, 30, (3, seq))
        (y,) = session.run({"ids": ids}).values()
        with torch.no_grad():
            expected = model(torch.from_numpy(ids)).numpy()
        assert y.shape == expected.shape == (3, seq, 8)
        np.testing.assert_allclose(y, expected, atol=1e-5)
