"""The eager layer an export's record describes, rebuilt to verify the export against.

A file and a served model both carry layerport's record (``ExportRecord``):
the layer, its parameters, dims, dtype and the weights' content hash. Both are
verified against the layer rebuilt from it, so both go through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from layerport.config import LayerConfig, config_from_record
from layerport.errors import BadFile
from layerport.registry import Registry
from layerport.runtime.metadata import ExportRecord

if TYPE_CHECKING:
    from collections.abc import Mapping

    from torch import nn


def rebuild_layer(
    registry: Registry,
    record: ExportRecord,
    *,
    weights: Path | None = None,
    dims: Mapping[str, int] | None = None,
) -> tuple[LayerConfig, nn.Module]:
    """The configuration and eager module an export's ``record`` describes.

    ``weights`` must hold the very tensors the export was made from: their
    content hash is checked against the record (``BadFile`` if it differs).
    """
    from layerport.eager.build import build_module
    from layerport.weights import tensors_sha256

    config = config_from_record(registry, record, weights=weights, dims=dims)
    if config.checkpoint is not None and record.weights_sha256 is not None:
        digest = tensors_sha256(config.checkpoint.tensors)
        if digest != record.weights_sha256:
            raise BadFile(
                f"weights file {config.weights} does not match the one this file was exported "
                f"from (its tensors' sha256 is {digest[:12]}..., "
                f"recorded {record.weights_sha256[:12]}...)"
            )
    return config, build_module(config)
