"""``layerport draft CHECKPOINT`` (issue 23 part 5): a model file from real checkpoints.

Each checkpoint is written by torch, numpy or safetensors from a real module;
the draft must parse as TOML, name the layers whose weights fit each group, in
the file's order, and say CHECK wherever a person must choose.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from hostile import assert_refused, assert_succeeded

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 has no TOML parser of its own
    tomllib = pytest.importorskip("tomli")


def _draft(cli, path) -> tuple[str, dict]:  # type: ignore[no-untyped-def]
    result = cli("draft", str(path))
    assert_succeeded(result)
    assert result.stderr == ""
    return result.stdout, tomllib.loads(result.stdout)


def _uses(model: dict) -> list[tuple[str, str]]:
    return [(layer["use"], layer["weights"]) for layer in model.get("layer", [])]


def _each_layer_loads(cli, path, model: dict) -> None:  # type: ignore[no-untyped-def]
    """Every drafted layer runs from the file with its prefix and params: the draft's own oracle."""
    for layer in model["layer"]:
        params = [f"{key}={value}" for key, value in layer.get("params", {}).items()]
        prefix = ["--weights-prefix", layer["weights"]] if layer["weights"] else []
        result = cli(
            "run",
            layer["use"],
            "--weights",
            str(path),
            *prefix,
            *(part for param in params for part in ("-p", param)),
        )
        assert_succeeded(result)


@pytest.fixture
def tagger_file(tmp_path):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    tagger = nn.Sequential(
        nn.Embedding(100, 16),
        nn.LSTM(16, 32, num_layers=2, bidirectional=True, batch_first=True),
        nn.Linear(64, 10),
    )
    path = tmp_path / "tagger.pt"
    torch.save(tagger.state_dict(), path)
    return path


def test_an_embedding_lstm_linear_checkpoint_drafts_its_three_layers(cli, tagger_file) -> None:
    text, model = _draft(cli, tagger_file)
    assert _uses(model) == [("embedding", "0."), ("lstm", "1."), ("linear", "2.")]
    assert model["inputs"] == {"ids": {"dtype": "int64", "shape": ["batch", "seq"]}}
    assert model["layer"][0]["input"] == "ids"
    assert model["outputs"] == {"y": "linear_2.y"}
    # The embedding's table alone could be a bias-free linear's: said, not hidden.
    assert "# CHECK: the tensors under '0.' fit embedding, linear:" in text
    assert "# CHECK: a placeholder: the input of the first layer (embedding's ids)." in text
    assert (
        "# from the weights: input_size = 16, hidden_size = 32, num_layers = 2, "
        "bidirectional = true, bias = true, proj_size = 0"
    ) in text
    assert '#   activation = "none"' in text  # the linear's, which no weight tells
    assert text == _draft(cli, tagger_file)[0]  # deterministic
    _each_layer_loads(cli, tagger_file, model)


def test_a_training_checkpoint_drafts_its_state_dict(cli, tmp_path, tagger_file) -> None:
    state = torch.load(tagger_file, weights_only=True)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 2}, path)
    _, model = _draft(cli, path)
    assert _uses(model) == [("embedding", "0."), ("lstm", "1."), ("linear", "2.")]


def test_a_conv_stack_drafts_its_layers_and_the_gaps_between(cli, tmp_path) -> None:
    torch.manual_seed(0)
    stack = nn.Sequential(
        nn.Conv2d(1, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 1),
        nn.Sigmoid(),
    )
    path = tmp_path / "pitch.pth"
    torch.save(stack.state_dict(), path)
    text, model = _draft(cli, path)
    assert _uses(model) == [
        ("conv2d", "0."),
        ("batchnorm2d", "1."),
        ("conv2d", "4."),
        ("batchnorm2d", "5."),
        ("linear", "8."),
    ]
    # conv2d reads in_channels from its weight (groups 1 unless told): no params needed.
    assert [layer.get("params") for layer in model["layer"]][::2] == [None, None, None]
    assert "# from the weights: in_channels = 1, out_channels = 8" in text
    assert "# CHECK: the tensors under '1.' fit batchnorm2d, batchnorm1d:" in text
    assert "# CHECK: 2 to 3 hold no weights" in text
    assert "# CHECK: 6 to 7 hold no weights" in text
    assert "# CHECK: batchnorm2d_5's y ends in width, not the 64 features this layer takes:" in text
    assert model["inputs"] == {"x": {"dtype": "float32", "shape": ["batch", 1, "height", "width"]}}
    _each_layer_loads(cli, path, model)


def test_an_npz_with_other_names_drafts_every_group_as_unmatched(cli, tmp_path) -> None:
    path = tmp_path / "g2p.npz"
    np.savez(
        path,
        emb_table=np.zeros((30, 8), np.float32),
        enc_wx=np.zeros((8, 64), np.float32),
        enc_wh=np.zeros((16, 64), np.float32),
        enc_b=np.zeros(64, np.float32),
        fc_w=np.zeros((40, 16), np.float32),
        fc_b=np.zeros(40, np.float32),
    )
    text, model = _draft(cli, path)
    assert "layer" not in model and "inputs" not in model  # nothing guessed
    assert text.count("# CHECK: no registered layer fits") == 3
    assert "no registered layer fits the tensor named emb_table (30, 8)." in text
    assert "fits the 3 tensors named enc_wx (8, 64), enc_wh (16, 64), enc_b (64,)." in text
    assert (
        '# By their shapes alone they fit linear: weights = { weight = "fc_w", bias = "fc_b" }'
    ) in text
    assert '# weights = { WEIGHT = "fc_w", WEIGHT = "fc_b" }' in text


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x).mean(-1))


def test_a_torchscript_archive_drafts_its_modules(cli, tmp_path) -> None:
    path = tmp_path / "vad.pt"
    torch.jit.script(Encoder()).save(str(path))
    text, model = _draft(cli, path)
    assert _uses(model) == [("batchnorm1d", "norm."), ("linear", "head.0."), ("linear", "head.2.")]
    assert [layer["name"] for layer in model["layer"]] == ["norm", "head_0", "head_2"]
    assert "# CHECK: head.1 hold no weights" in text
    _each_layer_loads(cli, path, model)


def test_a_safetensors_file_says_it_keeps_no_order(cli, tmp_path) -> None:
    from safetensors.torch import save_file

    stack = nn.Sequential(*[nn.Linear(4, 4) for _ in range(11)])
    path = tmp_path / "deep.safetensors"
    save_file(stack.state_dict(), path)
    text, model = _draft(cli, path)
    assert [layer["weights"] for layer in model["layer"]] == [f"{i}." for i in range(11)]
    assert "# CHECK: this format keeps no order" in text


def test_a_layer_saved_alone_is_one_group_at_the_top(cli, tmp_path) -> None:
    path = tmp_path / "lstm.pt"
    torch.save(nn.LSTM(3, 4).state_dict(), path)
    _, model = _draft(cli, path)
    assert _uses(model) == [("lstm", "")]


def test_draft_reads_npz_and_safetensors_without_torch(tmp_path) -> None:
    from safetensors.numpy import save_file

    np.savez(tmp_path / "w.npz", **{"0.weight": np.ones((3, 4), np.float32)})
    save_file({"fc.weight": np.ones((2, 8), np.float32)}, str(tmp_path / "w.safetensors"))
    # transformers' config.json beside them is read without torch too.
    (tmp_path / "config.json").write_text('{"model_type": "llama", "num_attention_heads": 2}')
    probe = (
        "import sys\n"
        "from layerport.cli import cli\n"
        "for name in ('w.npz', 'w.safetensors'):\n"
        "    try:\n"
        "        cli(['draft', name])\n"
        "    except SystemExit as done:\n"
        "        assert not done.code, done.code\n"
        "print('torch' in sys.modules)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path
    )
    assert completed.stdout.strip().splitlines()[-1] == "False", completed.stderr
    assert 'weights = "fc."' in completed.stdout
    assert "config.json beside them (transformers' model_type 'llama')" in completed.stdout


@pytest.mark.parametrize(
    ("name", "make", "words"),
    [
        pytest.param("model.pt", lambda path: None, "model.pt does not exist", id="missing"),
        pytest.param(
            "notes.txt", lambda path: path.write_text("hello"), "must end in", id="a-text-file"
        ),
        pytest.param(
            "model.pt",
            lambda path: path.write_text("hello"),
            "is not a PyTorch weights file",
            id="not-a-checkpoint",
        ),
        pytest.param("model.pt", lambda path: torch.save({}, path), "holds no tensors", id="empty"),
        pytest.param(
            "model.pt",
            lambda path: torch.save({"epoch": 3, "lr": 0.1}, path),
            "holds no tensors",
            id="no-tensors",
        ),
        pytest.param("model.npz", lambda path: np.savez(path), "holds no arrays", id="empty-npz"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, name, make, words) -> None:
    path = tmp_path / name
    make(path)
    assert_refused(cli("draft", str(path)), 2, words)
