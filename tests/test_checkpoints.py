"""Weights as training scripts save them: wrapper dicts, wrapper prefixes, whole models.

Every case runs the CLI on a real file saved with torch.save or safetensors.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from hostile import assert_refused, assert_succeeded


class Tagger(nn.Module):
    """A small model with an LSTM inside, as a training script would build it."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(10, 3)


@pytest.fixture
def tagger() -> Tagger:
    torch.manual_seed(0)
    return Tagger()


def _lstm_params(cli, *args: str) -> dict:  # type: ignore[no-untyped-def]
    result = cli("run", "lstm", "--dim", "batch=2", "--dim", "seq=3", "--json", *args)
    assert_succeeded(result)
    return json.loads(result.stdout)["params"]


INFERRED = {
    "input_size": 6,
    "hidden_size": 5,
    "num_layers": 2,
    "bidirectional": True,
    "bias": True,
    "proj_size": 0,
}


def test_a_training_checkpoint_loads_with_its_sizes_inferred(cli, tmp_path, tagger) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": tagger.state_dict(), "epoch": 3, "lr": 0.1}, path)
    result = cli("run", "lstm", "--weights", str(path), "--weights-prefix", "lstm.", "--json")
    assert_succeeded(result)
    assert json.loads(result.stdout)["params"] == INFERRED
    assert (
        "Note: ckpt.pt is a training checkpoint: using its 'model_state_dict' entry "
        "(ignoring 'epoch', 'lr')"
    ) in result.stderr
    assert "Note: using the tensors under 'lstm.', with the prefix stripped" in result.stderr


@pytest.mark.parametrize("wrapper", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_prefixes_are_stripped(cli, tmp_path, tagger, wrapper: str) -> None:
    path = tmp_path / "wrapped.pt"
    torch.save({wrapper + name: t for name, t in tagger.lstm.state_dict().items()}, path)
    assert _lstm_params(cli, "--weights", str(path)) == INFERRED


def test_a_bare_state_dict_in_safetensors_loads(cli, tmp_path, tagger) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "lstm.safetensors"
    save_file(tagger.lstm.state_dict(), path)
    assert _lstm_params(cli, "--weights", str(path)) == INFERRED


def test_a_given_parameter_must_agree_with_the_weights(cli, tmp_path, tagger) -> None:
    path = tmp_path / "lstm.pt"
    torch.save(tagger.lstm.state_dict(), path)
    assert_refused(
        cli("run", "lstm", "--weights", str(path), "-p", "hidden_size=10"),
        2,
        f"Error: parameter hidden_size is 10, but the weights in {path} imply hidden_size=5",
    )
    assert _lstm_params(cli, "--weights", str(path), "-p", "num_layers=2") == INFERRED


def test_a_projecting_lstm_reads_proj_size_from_its_weights(cli, tmp_path) -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 5, num_layers=2, proj_size=3, batch_first=True)
    path = tmp_path / "lstmp.pt"
    torch.save(lstm.state_dict(), path)
    params = _lstm_params(cli, "--weights", str(path))
    assert params == {**INFERRED, "bidirectional": False, "proj_size": 3}
    assert_refused(
        cli("run", "lstm", "--weights", str(path), "-p", "proj_size=2"),
        2,
        f"Error: parameter proj_size is 2, but the weights in {path} imply proj_size=3",
    )
    plain = tmp_path / "lstm.pt"
    torch.save(nn.LSTM(6, 5, batch_first=True).state_dict(), plain)
    assert_refused(
        cli("run", "lstm", "--weights", str(plain), "-p", "proj_size=3"),
        2,
        f"Error: parameter proj_size is 3, but the weights in {plain} imply proj_size=0",
    )


def test_proj_size_must_be_below_hidden_size(cli) -> None:
    assert_refused(
        cli("run", "lstm", "-p", "hidden_size=5", "-p", "proj_size=5"),
        2,
        "Error: proj_size=5 must be smaller than hidden_size=5 (proj_size=0 for no projection)",
    )


def test_a_whole_model_without_a_prefix_suggests_one(cli, tmp_path, tagger) -> None:
    path = tmp_path / "model.pt"
    torch.save(tagger.state_dict(), path)
    assert_refused(
        cli("run", "lstm", "--weights", str(path)),
        2,
        "do not fit the layer: missing",
        "and 13 more; the file holds them under 'lstm.': select them with --weights-prefix lstm.",
    )
    assert_refused(
        cli("run", "lstm", "--weights", str(path), "--weights-prefix", "encoder."),
        2,
        "no tensor in",
        "starts with 'encoder.'; its prefixes: embedding., head., lstm.",
    )


def test_several_tensor_dicts_are_listed_and_one_can_be_chosen(cli, tmp_path, tagger) -> None:
    path = tmp_path / "ema.pt"
    state = tagger.state_dict()
    torch.save({"model": state, "ema": state, "step": 7}, path)
    assert_refused(
        cli("run", "lstm", "--weights", str(path)),
        2,
        "holds several dicts of tensors ('model', 'ema'); choose one by starting "
        "--weights-prefix model. with its name",
    )
    assert _lstm_params(cli, "--weights", str(path), "--weights-prefix", "ema.lstm.") == INFERRED


def test_pickled_training_options_are_named_not_run(cli, tmp_path, tagger) -> None:
    path = tmp_path / "with_args.pt"
    torch.save({"model_state_dict": tagger.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    assert_refused(
        cli("run", "lstm", "--weights", str(path)),
        2,
        "was refused (it would import argparse.Namespace)",
        "re-save the weights alone, with torch.save(model.state_dict(), PATH)",
    )


def test_a_prefix_without_weights_is_refused(cli) -> None:
    assert_refused(
        cli("run", "lstm", "--weights-prefix", "lstm."),
        2,
        "Error: a weights prefix selects tensors from a weights file; pass one with --weights",
    )


def test_a_file_exported_from_a_checkpoint_verifies_from_it(cli, tmp_path, tagger) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": tagger.state_dict(), "epoch": 3}, path)
    model = tmp_path / "lstm.onnx"
    exported = cli(
        "export", "lstm", "--weights", str(path), "--weights-prefix", "lstm.", "-o", str(model),
        "--dim", "batch=2", "--dim", "seq=3", "--trials", "1",
    )  # fmt: skip
    assert_succeeded(exported)
    record = json.loads(cli("inspect", str(model), "--json").stdout)["layerport"]
    assert record["weights_prefix"] == "lstm." and record["weights_key"] == "model_state_dict"
    assert record["params"] == INFERRED
    assert_succeeded(cli("verify", str(model), "--weights", str(path), "--trials", "1"))
    assert_refused(
        cli("verify", str(model), "--weights", str(path), "--weights-prefix", "lstm."),
        2,
        "--weights-prefix does not apply to a file: it records its own configuration",
    )


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_each_command_reads_a_checkpoint_once(cli, tmp_path, tagger, monkeypatch, suffix) -> None:
    """export and verify FILE read the weights file once, and pass it down (issue 21)."""
    import layerport.weights

    path = tmp_path / f"ckpt{suffix}"
    state = {k: v.contiguous() for k, v in tagger.state_dict().items()}
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, path)
    reads: list[str] = []
    reader = layerport.weights.read_weights_file

    def counted(source):  # type: ignore[no-untyped-def]
        reads.append(source.name)
        return reader(source)

    monkeypatch.setattr(layerport.weights, "read_weights_file", counted)
    model = tmp_path / "lstm.onnx"
    exported = cli(
        "export", "lstm", "--weights", str(path), "--weights-prefix", "lstm.", "-o", str(model),
        "--dim", "batch=2", "--dim", "seq=3", "--trials", "1",
    )  # fmt: skip
    assert_succeeded(exported)
    assert reads == [path.name]
    assert_succeeded(cli("verify", str(model), "--weights", str(path), "--trials", "1"))
    assert reads == [path.name] * 2


def test_a_stacked_bidirectional_rnn_checkpoint_loads_without_p(cli, tmp_path) -> None:
    rnn = torch.nn.RNN(4, 3, num_layers=2, bidirectional=True, batch_first=True)
    path = tmp_path / "rnn.pt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in rnn.state_dict().items()}}, path)
    result = cli("run", "elman", "--weights", str(path), "--weights-prefix", "encoder.", "--json")
    assert result.exit_code == 0, result.stderr
    params = json.loads(result.stdout)["params"]
    assert params["num_layers"] == 2 and params["bidirectional"] is True
    assert params["input_size"] == 4 and params["hidden_size"] == 3


def test_a_prefix_without_its_dot_means_the_submodule(cli, tmp_path, tagger) -> None:
    path = tmp_path / "model.pt"
    torch.save(tagger.state_dict(), path)
    assert _lstm_params(cli, "--weights", str(path), "--weights-prefix", "lstm") == INFERRED


def test_a_file_from_a_checkpoint_verifies_from_the_layers_weights_alone(
    cli, tmp_path, tagger
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": tagger.state_dict()}, path)
    model = tmp_path / "lstm.onnx"
    assert_succeeded(
        cli(
            "export",
            "lstm",
            "--weights",
            str(path),
            "--weights-prefix",
            "lstm.",
            "-o",
            str(model),
            "--dim",
            "batch=2",
            "--dim",
            "seq=3",
            "--trials",
            "1",
        )
    )
    alone = tmp_path / "lstm_only.safetensors"
    save_file({k: v.contiguous() for k, v in tagger.lstm.state_dict().items()}, alone)
    assert_succeeded(cli("verify", str(model), "--weights", str(alone), "--trials", "1"))
    assert_refused(
        cli("verify", str(model)),
        2,
        "this file was exported from a weights file (its tensors under 'lstm.'); pass the "
        "same file with --weights",
    )


class Captioner(nn.Module):
    """The notebook's rnn as training scripts write it: torch's ``nn.RNN`` and a linear head."""

    def __init__(self, nonlinearity: str = "tanh", bias: bool = True) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 6)
        self.rnn = nn.RNN(6, 5, nonlinearity=nonlinearity, bias=bias, batch_first=True)
        self.fc = nn.Linear(5, 3, bias=bias)


RNN_PARTS = ("--weights-prefix", "recurrence=rnn.", "--weights-prefix", "head=fc.")


@pytest.mark.parametrize(("nonlinearity", "bias"), [("tanh", True), ("relu", False)])
def test_the_rnn_loads_from_an_nn_rnn_and_a_linear_head(
    cli, tmp_path, nonlinearity: str, bias: bool
) -> None:
    import numpy as np

    from layerport.runtime.session import load_model

    torch.manual_seed(0)
    model = Captioner(nonlinearity, bias)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, path)
    exported = tmp_path / "rnn.onnx"
    result = cli(
        "export", "rnn", "--weights", str(path), *RNN_PARTS, "-p", f"nonlinearity={nonlinearity}",
        "-o", str(exported), "--dim", "batch=2", "--dim", "seq=3", "--trials", "1",
    )  # fmt: skip
    assert_succeeded(result)
    assert "Note: reading recurrence (a one-layer torch.nn.RNN) from the tensors under 'rnn.'" in (
        result.stderr
    )
    record = json.loads(cli("inspect", str(exported), "--json").stdout)["layerport"]
    assert record["weights_parts"] == {"recurrence": "rnn.", "head": "fc."}
    assert record["params"] | {"nonlinearity": nonlinearity} == {
        "input_size": 6, "hidden_size": 5, "output_size": 3,
        "nonlinearity": nonlinearity, "bias": bias,
    }  # fmt: skip
    # The file, in the torch-free runtime, against the checkpoint's own modules at
    # sizes it was not traced at; h0 left out means zeros, as in nn.RNN.
    session = load_model(exported)
    x = np.random.default_rng(1).standard_normal((4, 7, 6)).astype(np.float32)
    h0 = np.random.default_rng(2).standard_normal((4, 5)).astype(np.float32)
    for feeds, state in (({"x": x}, None), ({"x": x, "h0": h0}, torch.from_numpy(h0)[None])):
        outputs = session.run(feeds)
        y, h_n = outputs["y"], outputs["h_n"]
        with torch.no_grad():
            hidden, expected_h_n = model.rnn(torch.from_numpy(x), state)
            expected_y = model.fc(hidden)
        np.testing.assert_allclose(y, expected_y.numpy(), atol=1e-5)
        np.testing.assert_allclose(h_n, expected_h_n[0].numpy(), atol=1e-5)
    assert_succeeded(cli("verify", str(exported), "--weights", str(path), "--trials", "1"))


def test_a_whole_model_with_the_rnns_parts_suggests_them(cli, tmp_path) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(Captioner().state_dict(), path)
    assert_refused(
        cli("run", "rnn", "--weights", str(path)),
        2,
        "the file holds them as a one-layer torch.nn.RNN under 'rnn.', a torch.nn.Linear "
        "read-out under 'fc.': select them with --weights-prefix recurrence=rnn. "
        "--weights-prefix head=fc.",
    )


@pytest.mark.parametrize(
    ("layer", "prefixes", "message"),
    [
        ("rnn", ["recurrence=rnn."], "weight part head has no prefix; give one for every part "
         "with --weights-prefix head=PREFIX (this layer's parts: recurrence, head)"),
        ("rnn", ["recurrence=rnn.", "readout=fc."], "unknown weight part 'readout'; this "
         "layer's parts: recurrence, head; give the weights' prefix alone with --weights-prefix"),
        ("rnn", ["recurrence=rnn.", "fc."], "--weights-prefix takes one PREFIX, or PART=PREFIX "
         "for each weight part (see 'layerport show LAYER'), got 'recurrence=rnn. fc.'"),
        ("rnn", ["recurrence=rnn.", "recurrence=fc."], "--weights-prefix recurrence is given "
         "twice"),
        ("linear", ["head=fc."], "this layer has no weight parts, so head= names none"),
    ],
)  # fmt: skip
def test_bad_weight_part_prefixes_are_refused(
    cli, tmp_path, layer: str, prefixes: list[str], message: str
) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(Captioner().state_dict(), path)
    flags = [word for prefix in prefixes for word in ("--weights-prefix", prefix)]
    assert_refused(cli("run", layer, "--weights", str(path), *flags), 2, message)


def test_show_lists_the_weight_parts(cli) -> None:
    result = cli("show", "rnn", "--json")
    described = json.loads(result.stdout)
    assert described["weight_parts"][0]["keys"]["weight_ih_l0"] == "wi.weight"
    by_name = {weight["name"]: weight["part"] for weight in described["weights"]}
    assert by_name["wo.weight"] == {"part": "head", "key": "weight"}
    assert "recurrence: weight_hh_l0" in cli("show", "rnn").stdout


@pytest.mark.parametrize("layer", ["rnn", "elman"])
def test_a_parameter_the_weights_do_not_determine_can_be_given(cli, tmp_path, layer) -> None:
    # The weights fix every size, but not the nonlinearity: -p sets it, unopposed.
    torch.manual_seed(0)
    model = Captioner("relu")
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    flags = RNN_PARTS if layer == "rnn" else ("--weights-prefix", "rnn.")
    result = cli(
        "run", layer, "--weights", str(path), *flags, "-p", "nonlinearity=relu",
        "--dim", "batch=2", "--dim", "seq=3", "--json",
    )  # fmt: skip
    assert_succeeded(result)
    assert json.loads(result.stdout)["params"]["nonlinearity"] == "relu"


class Encoder(nn.Module):
    """An LSTM with a projection beside it, so ``encoder.`` holds more than the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.proj = nn.Linear(10, 3)


class Translator(nn.Module):
    """Two LSTMs of the same sizes: two prefixes fit the lstm layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = Encoder()
        self.decoder = Encoder()


def _advised(stderr: str) -> list[str]:
    """The prefixes the error's advice names: "the file holds them under 'a.', 'b.': ..."."""
    import re

    listed = re.search(r"the file holds them under ((?:'[^']+'(?:, )?)+): select", stderr)
    assert listed, stderr
    return re.findall(r"'([^']+)'", listed.group(1))


def _lightning(state: dict) -> dict:
    """A Lightning checkpoint: the LightningModule's state dict, its model under ``model.``."""
    return {
        "state_dict": {f"model.{name}": tensor for name, tensor in state.items()},
        "epoch": 3,
        "global_step": 120,
        "optimizer_states": [
            {"state": {0: {"step": torch.tensor(120.0)}}, "param_groups": [{"lr": 0.1}]}
        ],
        "lr_schedulers": [],
    }


def _fsdp(state: dict) -> dict:
    """Keys as FSDP's auto-wrap policy saves them: each wrapped block adds a segment."""
    wrapped = "_fsdp_wrapped_module."
    return {
        wrapped
        + name.replace("encoder.", f"encoder.{wrapped}").replace(
            "decoder.", "decoder._checkpoint_wrapped_module."
        ): tensor
        for name, tensor in state.items()
    }


# Each case: the file's content, the prefix typed (None: none), and the prefixes
# the advice must name, in full, as they are typed back.
ADVICE_CASES = {
    "lightning, no prefix": (_lightning, None, ["model.encoder.lstm.", "model.decoder.lstm."]),
    "lightning, too broad": (_lightning, "model.encoder.", ["model.encoder.lstm.", "model.decoder.lstm."]),
    "too short": (dict, "enc.", ["encoder.lstm.", "decoder.lstm."]),
    "fsdp, no prefix": (_fsdp, None, ["encoder.lstm.", "decoder.lstm."]),
    "fsdp, too broad": (_fsdp, "_fsdp_wrapped_module.encoder.", ["encoder.lstm.", "decoder.lstm."]),
    "dataparallel, no prefix": (
        lambda state: {f"module.{k}": v for k, v in state.items()},
        None,
        ["encoder.lstm.", "decoder.lstm."],
    ),
    "several dicts, no prefix": (
        lambda state: {"model": state, "ema": state, "step": 7},
        None,
        ["model.encoder.lstm.", "model.decoder.lstm.", "ema.encoder.lstm.", "ema.decoder.lstm."],
    ),
    "several dicts, too broad": (
        lambda state: {"model": state, "ema": state, "step": 7},
        "ema.encoder.",
        ["model.encoder.lstm.", "model.decoder.lstm.", "ema.encoder.lstm.", "ema.decoder.lstm."],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", ADVICE_CASES)
def test_prefix_advice_names_every_fitting_prefix_and_each_loads(cli, tmp_path, case) -> None:
    """Issue 22: the advice comes from the file's full names, never from a stripped selection."""
    wrap, typed, fitting = ADVICE_CASES[case]
    path = tmp_path / "model.pt"
    torch.save(wrap(Translator().state_dict()), path)
    prefix_flags = ["--weights-prefix", typed] if typed else []
    refused = cli("run", "lstm", "--weights", str(path), *prefix_flags)
    assert refused.exit_code == 2, refused.stderr
    advised = _advised(refused.stderr)
    assert advised == fitting
    assert f"select one with --weights-prefix {fitting[0]}" in refused.stderr
    for prefix in advised:
        assert _lstm_params(cli, "--weights", str(path), "--weights-prefix", prefix) == INFERRED


def test_a_too_short_prefix_lists_the_fitting_ones_in_full(cli, tmp_path) -> None:
    path = tmp_path / "model.pt"
    torch.save(Translator().state_dict(), path)
    assert_refused(
        cli("run", "lstm", "--weights", str(path), "--weights-prefix", "enc."),
        2,
        "starts with 'enc.'; its prefixes: decoder., decoder.lstm., decoder.proj., encoder., "
        "encoder.lstm., encoder.proj.; the file holds them under 'encoder.lstm.', "
        "'decoder.lstm.': select one with --weights-prefix encoder.lstm.",
    )


def test_a_lightning_checkpoint_names_its_model_prefix(cli, tmp_path) -> None:
    path = tmp_path / "last.ckpt.pt"
    torch.save(_lightning(Encoder().state_dict()), path)
    assert_refused(
        cli("run", "lstm", "--weights", str(path)),
        2,
        "the file holds them under 'model.lstm.': select them with --weights-prefix model.lstm.",
    )
    assert_refused(
        cli("run", "lstm", "--weights", str(path), "--weights-prefix", "model."),
        2,
        "the file holds them under 'model.lstm.': select them with --weights-prefix model.lstm.",
    )
    assert _lstm_params(cli, "--weights", str(path), "--weights-prefix", "model.lstm.") == INFERRED


def test_fsdp_and_checkpoint_wrappers_are_stripped_inside_names(cli, tmp_path) -> None:
    """FSDP's and activation checkpointing's segments go, as torch.compile's do, with a note;
    the prefix may be typed as the file holds it or as stripped."""
    path = tmp_path / "fsdp.pt"
    torch.save(_fsdp(Translator().state_dict()), path)
    result = cli("run", "lstm", "--weights", str(path), "--weights-prefix", "encoder.lstm.")
    assert_succeeded(result)
    assert "Note: stripped the '_fsdp_wrapped_module.' that FSDP adds to names" in result.stderr
    assert (
        "Note: stripped the '_checkpoint_wrapped_module.' that activation checkpointing adds "
        "to names"
    ) in result.stderr
    as_held = "_fsdp_wrapped_module.encoder._fsdp_wrapped_module.lstm."
    assert _lstm_params(cli, "--weights", str(path), "--weights-prefix", as_held) == INFERRED
    as_held = "_fsdp_wrapped_module.decoder._checkpoint_wrapped_module.lstm."
    assert _lstm_params(cli, "--weights", str(path), "--weights-prefix", as_held) == INFERRED


def test_a_dataparallel_prefix_may_be_typed_as_the_file_holds_it(cli, tmp_path, tagger) -> None:
    path = tmp_path / "dp.pt"
    torch.save({f"module.{k}": v for k, v in tagger.state_dict().items()}, path)
    for prefix in ("lstm.", "module.lstm."):
        assert _lstm_params(cli, "--weights", str(path), "--weights-prefix", prefix) == INFERRED


@pytest.mark.parametrize(
    ("layer", "module", "given", "words"),
    [
        (
            "lstm",
            lambda: nn.LSTM(4, 5, num_layers=2),
            "hidden_size=7",
            "imply hidden_size=5 (weight_hh_l0 has shape (20, 5))",
        ),
        (
            "lstm",
            lambda: nn.LSTM(4, 5, num_layers=2),
            "num_layers=1",
            "imply num_layers=2 (the weights hold weight_ih_l1)",
        ),
        (
            "embedding",
            lambda: nn.Embedding(10, 4),
            "num_embeddings=12",
            "imply num_embeddings=10 (weight has shape (10, 4))",
        ),
        (
            "batchnorm1d",
            lambda: nn.BatchNorm1d(4, affine=False),
            "num_features=3",
            "imply num_features=4 (running_mean has shape (4,))",
        ),
        (
            "conv2d",
            lambda: nn.Conv2d(3, 6, 3),
            "in_channels=2",
            "imply in_channels=3 (weight has shape (6, 3, 3, 3))",
        ),
        (
            "lstm_cell",
            lambda: nn.LSTMCell(3, 4),
            "hidden_size=5",
            "imply hidden_size=4 (weight_ih has shape (16, 3))",
        ),
    ],
)
def test_a_size_the_weights_contradict_names_the_tensor_that_tells_it(
    cli, tmp_path, layer, module, given, words
) -> None:
    path = tmp_path / "weights.pt"
    torch.save(module().state_dict(), path)
    assert_refused(cli("run", layer, "--weights", str(path), "-p", given), 2, words)


def test_a_missing_buffer_is_named_with_the_shape_expected(cli, tmp_path) -> None:
    state = nn.BatchNorm1d(4).state_dict()
    del state["running_var"]
    torch.save(state, tmp_path / "norm.pt")
    assert_refused(
        cli("run", "batchnorm1d", "--weights", str(tmp_path / "norm.pt")),
        2,
        "do not fit the layer: missing running_var of shape (4,)",
    )
