"""The eager layer an export's record describes, rebuilt to verify the export against.

A file and a served model both carry layerport's record (``ExportRecord``):
the layer, its parameters, dims, dtype and the weights' content hash. Both are
verified against the layer rebuilt from it, so both go through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    content hash is checked against the record (``BadFile`` if it differs), and
    so is the stream the record says the file carries (a decoding feeds the
    file's outputs back as the record pairs them, so it must be the layer's).
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
    _check_stream(record, config)
    return config, build_module(config)


def _check_stream(record: ExportRecord, config: LayerConfig) -> None:
    """Refuse a record whose stream is not the one its layer streams with its parameters
    (``BadFile``); a record without one (a file exported before streams were recorded) passes."""
    streaming = config.spec.streaming
    expected = streaming.recorded(config.params) if streaming is not None else None
    if record.streaming is None or _same_stream(record.streaming, expected):
        return
    layer = f"layer {config.spec.name!r}"
    problem = f"its stream is {record.streaming}, but {layer} streams {expected}"
    wanted = dict(map(tuple, expected["carry"])) if expected is not None else {}
    for given, made in record.streaming["carry"]:
        if given in wanted and made != wanted[given]:
            problem = (
                f"its stream carries {made} into {given}, but {layer} carries {wanted[given]} there"
            )
            break
    raise BadFile(f"the file's layerport metadata is damaged: {problem}")


def _same_stream(recorded: dict[str, Any], expected: dict[str, Any] | None) -> bool:
    """Whether two records of a stream say the same, whatever the order of their pairs."""
    if expected is None:
        return False
    return all(recorded.get(key) == expected[key] for key in ("dim", "grows")) and sorted(
        map(tuple, recorded["carry"])
    ) == sorted(map(tuple, expected["carry"]))
