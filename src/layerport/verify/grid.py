"""The sizes verification runs at, and how a long sequence is cut into chunks.

Checking an export only at the shape it was traced at lets wrong files through:
a dim the exporter silently pinned, or an RNN unrolled to the example's length,
agrees perfectly at that one shape. So each dynamic dim is checked at its
smallest size (1, unless ``Dim.min_size`` says more), at the traced size and at
a larger size that is not a multiple of it
(``Dim.grid``), in every combination.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from layerport.spec import LayerSpec, Params


def size_grid(
    spec: LayerSpec,
    export_dims: Mapping[str, int],
    params: Params,
    largest: Mapping[str, int] | None = None,
) -> dict[str, list[int]]:
    """Each dynamic dim's sizes to check, for a file traced at ``export_dims``.

    Each starts at the dim's smallest valid size for ``params`` (1 for most).
    ``largest`` caps dims that whoever runs the file limits (a server's
    ``max_batch_size``): a size above the cap is checked at the cap instead.
    """
    grid = {}
    for dim in spec.dims:
        sizes = list(dim.grid(export_dims[dim.name], dim.smallest(params)))
        cap = (largest or {}).get(dim.name)
        if cap is not None:
            sizes = sorted({min(size, cap) for size in sizes})
        grid[dim.name] = sizes
    return grid


def grid_points(grid: Mapping[str, list[int]]) -> list[dict[str, int]]:
    """Every combination of the grid's sizes, as dim sizes by name."""
    return [dict(zip(grid, sizes, strict=True)) for sizes in itertools.product(*grid.values())]


def streaming_chunks(length: int, first: int) -> list[int]:
    """Uneven chunk sizes that add up to ``length``: 1, then ``first``, then the rest.

    A chunk of 1 and one of the traced size catch state carried wrongly at the
    edges; when the rest would be empty, it is split off the traced chunk.
    """
    if length > first + 1:
        return [1, first, length - 1 - first]
    return [1, length - 1]
