"""``layerport draft``: a model file drafted from a checkpoint (torch-free for safetensors and npz)."""

from __future__ import annotations

from pathlib import Path

import click

from layerport.cli.app import get_registry
from layerport.model.draft import draft_model, render_draft


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
def draft(checkpoint: Path) -> None:
    """Print a model file drafted from CHECKPOINT's tensors.

    Each group of tensors (by key prefix, in the file's order) becomes a layer
    of the registered type whose weight names and shapes fit it. Every choice a
    person must make is a comment marked CHECK: several layers that fit, a group
    no layer fits, layers without weights (activations, pooling) that leave no
    tensors, the model's input. Reads .safetensors, .pt/.pth/.bin, TorchScript
    and .npz files.

    \b
    Example:
      layerport draft tagger.pt > tagger.toml
    """
    click.echo(render_draft(draft_model(get_registry(), checkpoint)), nl=False)
