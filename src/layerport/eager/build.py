"""Instantiating a configured layer as an eager ``nn.Module``, and running it.

The same seed gives the same weights in any process: the builder runs under
``torch.manual_seed(seed)`` on a fresh default generator state, and the module is
cast to the requested dtype only afterwards, so float64 weights are exactly the
float32 draws widened.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from layerport.config import LayerConfig
from layerport.dtypes import precision
from layerport.errors import InvalidSpec, UserInputError
from layerport.weights import check_weights


def build_module(config: LayerConfig) -> nn.Module:
    """Build the layer in eval mode, with seeded weights or its checkpoint's tensors."""
    with torch.random.fork_rng(devices=[]), config.layer.plugin_code("build()"):
        torch.manual_seed(config.seed)
        module = config.spec.build(config.params)
    if not isinstance(module, nn.Module):
        raise InvalidSpec(
            f"layer {config.spec.name}: build() returned {type(module).__name__}, not an nn.Module"
        )
    module = module.to(precision(config.dtype).torch_dtype).eval()
    module.requires_grad_(False)
    declared = config.weight_shapes()
    actual = {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
    if actual != declared:
        raise InvalidSpec(
            f"layer {config.spec.name}: weights() declares {declared}, but the module holds {actual}"
        )
    if config.checkpoint is not None and config.weights is not None:
        checkpoint = config.checkpoint
        tensors = checkpoint.tensors
        # Integer buffers (BatchNorm's num_batches_tracked) are bookkeeping, loaded as they are.
        integer = {
            name for name, tensor in module.state_dict().items() if not tensor.is_floating_point()
        }
        check_weights(
            tensors,
            declared,
            config.dtype,
            config.weights,
            config.spec.weight_parts,
            checkpoint=checkpoint,
            integer=integer,
        )
        module.load_state_dict(tensors, strict=True)
    return module


def to_torch(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``array``'s memory; bfloat16 arrays (ml_dtypes') are viewed through uint16.

    ``torch.from_numpy`` knows numpy's own dtypes only, and numpy has no bfloat16.
    """
    array = np.ascontiguousarray(array)
    if array.dtype == precision("bfloat16").numpy_dtype:
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a numpy array; a bfloat16 one as ml_dtypes' bfloat16 (see ``to_torch``)."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(precision("bfloat16").numpy_dtype)
    return tensor.numpy()


def torch_arguments(
    config: LayerConfig, inputs: Mapping[str, np.ndarray]
) -> list[torch.Tensor | None]:
    """The forward call's arguments, in the declared order; omitted optional inputs are ``None``."""
    return [
        to_torch(inputs[tensor.name]) if tensor.name in inputs else None
        for tensor in config.spec.inputs
    ]


def run_module(
    module: Callable[..., Any],
    config: LayerConfig,
    inputs: Mapping[str, np.ndarray],
    *,
    who: str = "forward()",
) -> dict[str, np.ndarray]:
    """One eager forward pass of ``module`` (or of a reference callable), outputs by name.

    ``who`` names the code in errors: a layer's failure is reported as its own.
    """
    arguments = torch_arguments(config, inputs)
    # no_grad, not inference_mode: torch's scan and compiled paths recompile under it.
    with torch.no_grad(), config.layer.plugin_code(who):
        result = module(*arguments)
    outputs = (result,) if isinstance(result, torch.Tensor) else tuple(result)
    names = [tensor.name for tensor in config.spec.outputs]
    if len(outputs) != len(names):
        raise InvalidSpec(
            f"layer {config.spec.name}: {who} returned {len(outputs)} outputs, "
            f"the spec declares {len(names)} ({', '.join(names)})"
        )
    dims = config.dims_of(inputs)
    for tensor, output in zip(config.spec.outputs, outputs, strict=True):
        declared = config.shape(tensor, dims)
        if tuple(output.shape) != declared:
            raise InvalidSpec(
                f"layer {config.spec.name}: {who} returned {tensor.name} of shape "
                f"{tuple(output.shape)}, but the spec declares ({', '.join(tensor.dims)}) = {declared}"
            )
    return {name: to_numpy(output) for name, output in zip(names, outputs, strict=True)}


def run_layer(config: LayerConfig, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Build the layer and run one forward pass on ``inputs``."""
    missing = [t.name for t in config.spec.inputs if not t.optional and t.name not in inputs]
    if missing:
        raise UserInputError(f"input {missing[0]} is required")
    return run_module(build_module(config), config, inputs)
