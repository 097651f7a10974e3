"""Instantiating a configured layer as an eager ``nn.Module``, and running it.

The same seed gives the same weights in any process: the builder runs under
``torch.manual_seed(seed)`` on a fresh default generator state, and the module is
cast to the requested dtype only afterwards, so float64 weights are exactly the
float32 draws widened.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from layerport.config import LayerConfig
from layerport.errors import InvalidSpec, LayerFailed, LayerportError, one_line
from layerport.weights import check_weights, read_weights

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_module(config: LayerConfig) -> nn.Module:
    """Build the layer in eval mode, with seeded weights or the weights file's."""
    with torch.random.fork_rng(devices=[]), _plugin_code(config, "build()"):
        torch.manual_seed(config.seed)
        module = config.spec.build(config.params)
    if not isinstance(module, nn.Module):
        raise InvalidSpec(
            f"layer {config.spec.name}: build() returned {type(module).__name__}, not an nn.Module"
        )
    module = module.to(TORCH_DTYPES[config.dtype]).eval()
    module.requires_grad_(False)
    declared = config.weight_shapes()
    actual = {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}
    if actual != declared:
        raise InvalidSpec(
            f"layer {config.spec.name}: weights() declares {declared}, but the module holds {actual}"
        )
    if config.weights is not None:
        tensors = read_weights(config.weights)
        check_weights(tensors, declared, config.dtype, config.weights)
        module.load_state_dict(tensors, strict=True)
    return module


@contextlib.contextmanager
def _plugin_code(config: LayerConfig, what: str) -> Iterator[None]:
    """Report an exception from a layer's own code as that layer's failure, not layerport's.

    A broken layer then fails its own command (exit 1) and does not stop
    ``export --all`` for the others.
    """
    try:
        yield
    except LayerportError:
        raise
    except Exception as error:
        raise LayerFailed(
            f"layer {config.spec.name} (plugin {config.layer.plugin.name}): {what} raised "
            f"{type(error).__name__}: {one_line(error)}"
        ) from error


def run_module(
    module: nn.Module, config: LayerConfig, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """One eager forward pass; omitted optional inputs are passed as ``None``."""
    arguments = [
        torch.from_numpy(np.ascontiguousarray(inputs[tensor.name]))
        if tensor.name in inputs
        else None
        for tensor in config.spec.inputs
    ]
    # no_grad, not inference_mode: torch's scan and compiled paths recompile under it.
    with torch.no_grad(), _plugin_code(config, "forward()"):
        result = module(*arguments)
    outputs = (result,) if isinstance(result, torch.Tensor) else tuple(result)
    names = [tensor.name for tensor in config.spec.outputs]
    if len(outputs) != len(names):
        raise InvalidSpec(
            f"layer {config.spec.name}: forward() returned {len(outputs)} outputs, "
            f"the spec declares {len(names)} ({', '.join(names)})"
        )
    return {name: output.detach().numpy() for name, output in zip(names, outputs, strict=True)}
