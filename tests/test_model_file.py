"""Model files (issue 23): registered layers composed into one exported, verified file.

The oracle is always torch's own model holding the same trained weights, run
at sizes the export was never traced at; the composition's eager twin is what
layerport verifies against, so it cannot be the judge here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from hostile import assert_refused
from layerport import Dim, LayerSpec, Param, Tensor

from conftest import SpecPlugin

TAGGER = """\
[model]
name = "tagger"

[inputs.ids]
dtype = "int64"
shape = ["batch", "seq"]

[[layer]]
name = "embed"
use = "embedding"
weights = "embedding."

[[layer]]
name = "encoder"
use = "lstm"
weights = "lstm."

[[layer]]
name = "head"
use = "linear"
weights = "head."
input = "encoder.y"

[outputs]
tags = "head.y"
"""


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(100, 16)
        self.lstm = nn.LSTM(16, 24, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(48, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embedding(tokens))
        return self.head(hidden)


def train(model: nn.Module, batch: torch.Tensor, steps: int = 20) -> nn.Module:
    """A few optimizer steps, so the weights are a trained model's, not an initializer's."""
    torch.manual_seed(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(batch).float().square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tagger]:
    folder = tmp_path_factory.mktemp("tagger")
    torch.manual_seed(0)
    model = train(Tagger(), torch.randint(0, 100, (8, 12)))
    torch.save({"model_state_dict": model.state_dict(), "epoch": 20}, folder / "ckpt.pt")
    (folder / "tagger.toml").write_text(TAGGER)
    return folder, model


def run_file(path: Path, **inputs: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def test_the_tagger_exports_in_one_command_and_equals_the_trained_model(tagger, cli) -> None:
    folder, model = tagger
    out = folder / "tagger.onnx"
    result = cli("export", str(folder / "tagger.toml"), "--weights", str(folder / "ckpt.pt"),
                 "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "verification: passed" in result.stdout
    # One note for the checkpoint's wrapper, not one per layer.
    assert result.stderr.count("training checkpoint") == 1
    ids = torch.randint(0, 100, (3, 41))  # neither size was traced
    (tags,) = run_file(out, ids=ids.numpy())
    with torch.no_grad():
        expected = model(ids).numpy()
    assert tags.shape == (3, 41, 5)
    assert np.abs(tags - expected).max() < 1e-5
    record = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    uses = [layer["use"] for layer in json.loads(record["layerport.model"])["layer"]]
    assert uses == ["layerport-nn:embedding", "layerport-recurrent:lstm", "layerport:linear"]
    assert json.loads(record["layerport.input_ranges"]) == {"ids": [0, 100]}
    # The record rebuilds the model without its model file.
    (folder / "tagger.toml").rename(folder / "moved.toml")
    try:
        again = cli("verify", str(out), "--weights", str(folder / "ckpt.pt"))
    finally:
        (folder / "moved.toml").rename(folder / "tagger.toml")
    assert again.exit_code == 0, again.stderr
    assert "passed" in again.stdout


def test_run_and_show_take_a_model_file(tagger, cli) -> None:
    folder, _ = tagger
    shown = cli("show", str(folder / "tagger.toml"), "--weights", str(folder / "ckpt.pt"))
    assert shown.exit_code == 0, shown.stderr
    assert "encoder.weight_ih_l1_reverse" in shown.stdout
    ran = cli("run", str(folder / "tagger.toml"), "--weights", str(folder / "ckpt.pt"),
              "--dim", "seq=7")  # fmt: skip
    assert ran.exit_code == 0, ran.stderr
    assert "4 x 7 x 5" in ran.stdout


CONV_CHAIN = """\
[model]
name = "classifier"

[inputs.image]
shape = ["batch", 3, 12, 12]

[[layer]]
name = "conv"
use = "conv2d"
weights = "0."

[[layer]]
name = "norm"
use = "batchnorm2d"
weights = "1."

[[layer]]
name = "relu"
use = "activation"              # (batch, seq, features) runs at every (batch, channel)
params = { function = "relu" }

[[layer]]
name = "pool"
use = "maxpool2d"
params = { kernel_size = 2 }   # channels: what feeds it has 6

[[layer]]
name = "flat"
use = "flatten"

[[layer]]
name = "head"
use = "linear"
weights = "5."
params = { activation = "sigmoid" }   # the weights cannot tell it
"""


def test_a_conv_chain_equals_the_same_nn_sequential(tmp_path: Path, cli) -> None:
    torch.manual_seed(0)
    chain = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(150, 4),
        nn.Sigmoid(),
    )
    # Training moves BatchNorm's running statistics off 0 and 1.
    train(chain, torch.randn(16, 3, 12, 12))
    torch.save(chain.state_dict(), tmp_path / "chain.pt")
    (tmp_path / "classifier.toml").write_text(CONV_CHAIN)
    out = tmp_path / "classifier.onnx"
    result = cli("export", str(tmp_path / "classifier.toml"), "--weights",
                 str(tmp_path / "chain.pt"), "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    for batch in (1, 5, 13):
        image = torch.randn(batch, 3, 12, 12)
        (y,) = run_file(out, image=image.numpy())
        with torch.no_grad():
            expected = chain(image).numpy()
        assert np.abs(y - expected).max() < 1e-5


SEQUENCE_CHAIN = """\
[model]
name = "frames"

[inputs.signal]
shape = ["batch", 4, "length"]

[[layer]]
name = "conv"
use = "conv1d"
weights = "0."

[[layer]]
name = "norm"
use = "batchnorm1d"
weights = "1."

[[layer]]
name = "pool"
use = "maxpool1d"
params = { kernel_size = 2 }
"""


def test_a_sequence_chain_runs_at_lengths_it_was_not_traced_at(tmp_path: Path, cli) -> None:
    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv1d(4, 8, 3), nn.BatchNorm1d(8), nn.MaxPool1d(2))
    train(chain, torch.randn(8, 4, 40))
    torch.save(chain.state_dict(), tmp_path / "chain.pt")
    (tmp_path / "frames.toml").write_text(SEQUENCE_CHAIN)
    out = tmp_path / "frames.onnx"
    result = cli("export", str(tmp_path / "frames.toml"), "--weights",
                 str(tmp_path / "chain.pt"), "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # The output length is the layers' formulas composed: (length - 2) // 2.
    output = onnx.load(str(out)).graph.output[0]
    assert "length" in output.type.tensor_type.shape.dim[2].dim_param
    for length in (4, 23, 57):
        signal = torch.randn(2, 4, length)
        (y,) = run_file(out, signal=signal.numpy())
        with torch.no_grad():
            expected = chain(signal).numpy()
        assert y.shape == expected.shape == (2, 8, (length - 2) // 2)
        assert np.abs(y - expected).max() < 1e-5
    # Below the smallest length the layers accept, the model refuses, naming it.
    short = cli("run", str(tmp_path / "frames.toml"), "--weights", str(tmp_path / "chain.pt"),
                "--dim", "length=3")  # fmt: skip
    assert short.exit_code == 2
    assert "dim length" in short.stderr and "at least 4" in short.stderr


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_weights_under_other_names_are_mapped_one_key_per_weight(
    tmp_path: Path, cli, suffix: str
) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    head = nn.Linear(6, 3)
    tensors = {"fc_w": head.weight.detach(), "fc_b": head.bias.detach()}
    weights = tmp_path / f"w{suffix}"
    if suffix == ".npz":
        np.savez(weights, **{name: tensor.numpy() for name, tensor in tensors.items()})
    else:
        save_file(tensors, weights)
    (tmp_path / "head.toml").write_text(
        '[model]\nname = "head"\n[inputs.x]\nshape = ["batch", "seq", 6]\n'
        '[[layer]]\nname = "fc"\nuse = "linear"\nweights = { weight = "fc_w", bias = "fc_b" }\n'
        "[dims.seq]\ndefault = 7\ncheck_size = 19\n"
    )
    out = tmp_path / "head.onnx"
    result = cli("export", str(tmp_path / "head.toml"), "--weights", str(weights),
                 "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "seq [1, 7, 19]" in result.stdout  # as [dims.seq] says
    x = torch.randn(2, 9, 6)
    (y,) = run_file(out, x=x.numpy())
    with torch.no_grad():
        assert np.abs(y - head(x).numpy()).max() < 1e-6


def _shifted_in_export() -> LayerSpec:
    """An identity in eager that adds 0.5 in the export: a layer whose export is wrong."""

    def build(params):  # type: ignore[no-untyped-def]
        class Shifted(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x + 0.5 if torch.onnx.is_in_onnx_export() else x

        return Shifted()

    return LayerSpec(
        name="shifted",
        description="A test layer whose export is wrong.",
        build=build,
        weights=lambda params: {},
        params=(Param("features", int, 3, "width", minimum=1),),
        dims=(Dim("batch", 4, "samples"), Dim("seq", 5, "positions")),
        inputs=(Tensor("x", ("batch", "seq", "features")),),
        outputs=(Tensor("y", ("batch", "seq", "features")),),
    )


def test_a_wrong_middle_layer_is_named(tmp_path: Path, cli, register_plugin) -> None:
    register_plugin(SpecPlugin(_shifted_in_export()), "shifted-test")
    (tmp_path / "three.toml").write_text(
        '[model]\nname = "three"\n[inputs.x]\nshape = ["batch", "seq", 4]\n'
        '[[layer]]\nname = "first"\nuse = "linear"\nparams = { in_features = 4, out_features = 3 }\n'
        '[[layer]]\nname = "middle"\nuse = "shifted"\n'
        '[[layer]]\nname = "last"\nuse = "linear"\nparams = { in_features = 3, out_features = 2 }\n'
    )
    out = tmp_path / "three.onnx"
    result = cli("export", str(tmp_path / "three.toml"), "-o", str(out))
    assert result.exit_code == 1
    assert "layer middle (shifted-test:shifted) is the first whose output diverges" in result.stderr
    # One error line (the note says the layers' weights are seeded: no weights file).
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if not line.startswith("Note: ")] == [lines[-1]]
    assert lines[-1].startswith("Error: ")
    assert not out.exists()


BAD_MODELS = {
    "unknown layer": (
        TAGGER.replace('use = "lstm"', 'use = "lstmm"'),
        "tagger.toml:15: layer 'encoder', key use: ",
    ),
    "cycle": (
        '[model]\nname = "loop"\n[inputs.x]\nshape = ["batch", "seq", 48]\n'
        '[[layer]]\nname = "a"\nuse = "linear"\nweights = "head."\ninput = "b.y"\n'
        '[[layer]]\nname = "b"\nuse = "linear"\nweights = "head."\ninput = "a.y"\n',
        "tagger.toml:9: layer 'a', key input: the layers a -> b -> a feed each other in a cycle",
    ),
    "output naming a missing layer": (
        TAGGER.replace('tags = "head.y"', 'tags = "tail.y"'),
        "tagger.toml:25: key outputs.tags: 'tail.y' names no layer",
    ),
    "input of the wrong dtype": (
        TAGGER.replace('dtype = "int64"', 'dtype = "float32"'),
        # As docs/models.md shows it.
        "Error: tagger.toml:8: layer 'embed', key input: input ids of layer embedding takes "
        "int64, but ids is float",
    ),
    "absent weight key": (
        TAGGER.replace(
            'weights = "head."', 'weights = { weight = "head.weight", bias = "head.b" }'
        ),
        "holds no tensor 'head.b' (for bias); did you mean 'head.bias'?",
    ),
    "unknown key": (
        TAGGER.replace('use = "linear"', 'use = "linear"\nsize = 3'),
        "layer 'head', key size: unknown key",
    ),
    "a dim no input has": (
        TAGGER + "\n[dims.sequence]\ndefault = 16\n",
        "tagger.toml:27: key dims.sequence: the model has no dim sequence; its dims: batch, seq",
    ),
    "ids declared beyond the table": (
        TAGGER.replace('dtype = "int64"', 'dtype = "int64"\nhigh = 1000'),
        "key inputs.ids.high: high = 1000, but layer embed takes ids below 100; declare "
        "high = 100 or less",
    ),
    "not TOML": ("[model\n", "is not valid TOML"),
    "no layers": ('[model]\nname = "m"\n[inputs.x]\nshape = ["batch"]\n', "declares no layer"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_a_bad_model_file_exits_2_naming_the_line_or_key(
    tagger, cli, tmp_path: Path, case: str
) -> None:
    folder, _ = tagger
    text, message = BAD_MODELS[case]
    (tmp_path / "tagger.toml").write_text(text)
    out = tmp_path / "tagger.onnx"
    result = cli("export", str(tmp_path / "tagger.toml"), "--weights", str(folder / "ckpt.pt"),
                 "-o", str(out))  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
    assert not out.exists()


def test_the_readme_model_file_exports_the_tagger(tagger, cli, tmp_path: Path) -> None:
    import re

    folder, model = tagger
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Export a trained model") :]
    (text,) = re.findall(r"```toml\n(.*?)```", section.split("\n## ")[0], flags=re.DOTALL)
    (tmp_path / "tagger.toml").write_text(text)
    out = tmp_path / "tagger.onnx"
    result = cli("export", str(tmp_path / "tagger.toml"), "--weights", str(folder / "ckpt.pt"),
                 "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    tokens = torch.randint(0, 100, (2, 33))
    (y,) = run_file(out, tokens=tokens.numpy())
    with torch.no_grad():
        assert np.abs(y - model(tokens).numpy()).max() < 1e-5


def test_the_triton_target_and_bench_take_a_model_file(tagger, cli, tmp_path: Path) -> None:
    folder, _ = tagger
    model = str(folder / "tagger.toml")
    weights = str(folder / "ckpt.pt")
    result = cli("export", model, "--weights", weights, "--target", "triton-python",
                 "-o", str(tmp_path / "repository"))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    config = (tmp_path / "repository" / "tagger" / "config.pbtxt").read_text()
    assert 'name: "ids"' in config and "data_type: TYPE_INT64" in config
    assert (tmp_path / "repository" / "tagger" / "1" / "model.onnx").is_file()
    bench = cli("bench", model, "--weights", weights, "--min-time", "0.05", "--json")
    assert bench.exit_code == 0, bench.stderr
    assert json.loads(bench.stdout)["layer"] == "model:tagger"


def test_a_draft_of_the_checkpoint_exports_as_written(tagger, cli, tmp_path: Path) -> None:
    folder, model = tagger
    drafted = cli("draft", str(folder / "ckpt.pt"))
    assert drafted.exit_code == 0, drafted.stderr
    assert "# CHECK" in drafted.stdout  # it never guesses silently
    (tmp_path / "drafted.toml").write_text(drafted.stdout)
    out = tmp_path / "drafted.onnx"
    result = cli("export", str(tmp_path / "drafted.toml"), "--weights", str(folder / "ckpt.pt"),
                 "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    ids = torch.randint(0, 100, (2, 15))
    (y,) = run_file(out, ids=ids.numpy())
    with torch.no_grad():
        assert np.abs(y - model(ids).numpy()).max() < 1e-5


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_torchscript_archive_of_the_model_exports_without_running_its_code(
    tagger, cli, tmp_path: Path
) -> None:
    folder, model = tagger
    torch.jit.script(model).save(str(tmp_path / "tagger.jit.pt"))
    out = tmp_path / "tagger.onnx"
    result = cli("export", str(folder / "tagger.toml"), "--weights",
                 str(tmp_path / "tagger.jit.pt"), "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    ids = torch.randint(0, 100, (3, 19))
    (y,) = run_file(out, ids=ids.numpy())
    with torch.no_grad():
        assert np.abs(y - model(ids).numpy()).max() < 1e-5


TIED = """
[model]
name = "tied"

[inputs.ids]
dtype = "int64"
shape = ["batch", "seq"]

[[layer]]
name = "embed"
use = "embedding"
weights = "table."

[[layer]]
name = "head"
use = "linear"
weights = "table."
params = { bias = false }

[outputs]
scores = "head.y"
"""


def test_two_layers_that_read_one_table_share_it_in_the_file(tmp_path: Path, cli) -> None:
    """A head tied to its embedding (``tie_word_embeddings``): one table in the file, used twice."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    table = torch.randn(50, 12)
    save_file({"table.weight": table}, tmp_path / "tied.safetensors")
    (tmp_path / "tied.toml").write_text(TIED)
    out = tmp_path / "tied.onnx"
    result = cli("export", str(tmp_path / "tied.toml"), "--weights",
                 str(tmp_path / "tied.safetensors"), "-o", str(out))  # fmt: skip
    assert result.exit_code == 0, result.stderr
    tables = [t for t in onnx.load(str(out)).graph.initializer if list(t.dims) == [50, 12]]
    assert len(tables) == 1
    ids = np.random.default_rng(0).integers(0, 50, (3, 7))
    (scores,) = run_file(out, ids=ids)
    expected = (nn.functional.embedding(torch.tensor(ids), table) @ table.T).numpy()
    assert np.abs(scores - expected).max() < 1e-4


def test_a_prefix_that_holds_nothing_is_advised_as_the_layers_weights_key(
    tmp_path: Path, cli
) -> None:
    """In a model file the advice names the layer's ``weights`` key, not a command's flag."""
    from safetensors.torch import save_file

    save_file({"table.weight": torch.randn(50, 12)}, tmp_path / "tied.safetensors")
    (tmp_path / "tied.toml").write_text(
        TIED.replace('weights = "table."\nparams', 'weights = "lm_head."\nparams')
    )
    result = cli(
        "show", str(tmp_path / "tied.toml"), "--weights", str(tmp_path / "tied.safetensors")
    )
    assert_refused(result, 2, "tied.toml:17: layer 'head', key weights: no tensor in")
    assert result.stderr.rstrip().endswith('select them with weights = "table." on this layer')
    assert "--weights-prefix" not in result.stderr
