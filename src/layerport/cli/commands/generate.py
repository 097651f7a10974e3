"""``layerport generate``: greedy decoding through a decoder file's KV cache, torch-free."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from layerport.cli.options import threads_option, weights_option
from layerport.cli.output import note, print_json
from layerport.errors import UserInputError, WorkFailed

if TYPE_CHECKING:
    from layerport.runtime.generation import Decoding, Step
    from layerport.runtime.metadata import ExportRecord
    from layerport.runtime.session import Session


def _ids(context: click.Context, parameter: click.Parameter, text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",")]
    except ValueError:
        message = f"expected ids separated by commas, such as 1,2,3; got {text!r}"
        raise click.BadParameter(message) from None
    # The file's own range (its vocabulary) is checked with its inputs; int64 holds the ids.
    if any(not 0 <= id_ < 2**63 for id_ in ids):
        raise click.BadParameter(f"ids are 0 or more, and below 2**63; got {text!r}")
    return ids


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--prompt-ids",
    "prompt",
    required=True,
    callback=_ids,
    help="The prompt's token ids, separated by commas: 1,2,3.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="How many ids to generate, one call of the file each after the prefill.",
)
@click.option(
    "--eager",
    is_flag=True,
    help="Also decode in eager PyTorch, rebuilt from the file's record (with --weights if "
    "it was exported from a checkpoint), and fail unless the ids agree. Needs torch.",
)
@click.option(
    "--copy-cache",
    is_flag=True,
    help="Feed each call the cache the call before gave back, as a plain onnxruntime "
    "session does, even where the file's cache can stay in bound buffers.",
)
@weights_option
@threads_option(0, 0, "onnxruntime intra-op threads; 0 uses every core.")
@click.option("--json", "json_", is_flag=True, help="Print the ids, timing and cache as JSON.")
def generate(
    file: Path,
    prompt: list[int],
    steps: int,
    eager: bool,
    copy_cache: bool,
    weights: Path | None,
    threads: int,
    json_: bool,
) -> None:
    """Generate token ids greedily through a decoder file's KV cache, without torch.

    The prompt runs in one call (the prefill, the cache empty), then each new
    id in one call. Where the file's attention is onnxruntime's
    GroupQueryAttention (a decoder exported in the fused form), the cache stays
    in one buffer per layer, sized once for the whole decoding and bound to the
    session, and each call writes its keys and values into it in place;
    otherwise, or with --copy-cache, the cache the file gave back is fed to the
    next call. The ids go to stdout, separated by commas. With --eager or
    --weights, the same decoding runs in eager PyTorch too, and any
    disagreement is an error (exit 1).

    \b
    Examples:
      layerport generate decoder.onnx --prompt-ids 1,2,3 --steps 8
      layerport generate decoder.onnx --prompt-ids 1,2,3 --weights model.safetensors
    """
    from layerport.runtime.generation import Decoding, copied_cache, greedy_ids
    from layerport.runtime.metadata import ExportRecord
    from layerport.runtime.session import SessionSettings, load_model

    session = load_model(file, SessionSettings(threads=threads))
    record = ExportRecord.from_model(session.proto)
    decoding = Decoding.of(record, session.inputs, session.outputs)

    if steps > 1:
        # Checked once, at the shapes that make the most: the calls between make less.
        session.check_inputs(decoding.largest_call(prompt, steps))
    session.check_inputs(decoding.prefill(prompt))
    # Every position but the last id's, which is picked and never fed back.
    step = None if copy_cache else _bound_step(session, decoding, len(prompt) + steps - 1)
    cache = "copied" if step is None else "bound"
    if step is None:
        step = copied_cache(session.run_checked, decoding)
    started = time.perf_counter()
    ids = greedy_ids(step, prompt, steps)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "file": str(file),
        "prompt": prompt,
        "ids": ids,
        "seconds": seconds,
        "cache": cache,
    }
    if eager or weights is not None:
        assert record is not None  # Decoding.of refuses a file without one
        eager_ids = _eager_ids(record, weights, decoding, prompt, steps)
        result["eager"] = {"ids": eager_ids, "agree": eager_ids == ids}
    # The ids are printed even where eager disagrees: they are what the file decodes.
    if json_:
        print_json(result)
    else:
        click.echo(",".join(map(str, ids)))
    if "eager" in result and not result["eager"]["agree"]:
        raise WorkFailed(_disagreement(ids, result["eager"]["ids"]))
    if json_:
        return
    note(
        f"{_count(steps)} in {seconds * 1000:.1f} ms through onnxruntime (prefill and steps), "
        f"the cache {'in bound buffers, written in place' if cache == 'bound' else 'copied'}"
    )
    if "eager" in result:
        note(f"eager PyTorch picked the same {_count(steps)}")


def _count(steps: int) -> str:
    return "1 id" if steps == 1 else f"{steps} ids"


def _disagreement(ids: list[int], eager_ids: list[int]) -> str:
    first = next(i for i, (a, b) in enumerate(zip(ids, eager_ids, strict=True)) if a != b)
    after = f", after the same {','.join(map(str, ids[:first]))}" if first else ""
    return (
        f"onnxruntime and eager PyTorch disagree at step {first + 1}{after}: onnxruntime "
        f"picked {ids[first]}, eager {eager_ids[first]}"
    )


def _bound_step(session: Session, decoding: Decoding, capacity: int) -> Step | None:
    """Decoding steps with the cache in bound buffers ``capacity`` positions long, or ``None``
    where the file's cache cannot be bound (``runtime.bound``)."""
    from layerport.runtime.bound import BoundCache, bound_session

    variant = bound_session(session, decoding.carry)
    if variant is None:
        return None
    cache = BoundCache(variant, decoding.carry, decoding.empty, capacity)
    return lambda ids: cache({decoding.ids: ids})[decoding.logits]


def _eager_ids(
    record: ExportRecord, weights: Path | None, decoding: Decoding, prompt: list[int], steps: int
) -> list[int]:
    """The same greedy decoding through the eager model the file's record describes."""
    from layerport.cli.app import get_registry, require_dependencies

    require_dependencies("torch")
    from layerport.eager.build import run_module
    from layerport.runtime.generation import copied_cache, greedy_ids
    from layerport.verify.rebuild import rebuild_layer

    if record.weights_sha256 is not None and weights is None:
        raise UserInputError(
            "the file was exported from a checkpoint: give it with --weights to decode in eager"
        )
    config, module = rebuild_layer(get_registry(), record, weights=weights)
    step = copied_cache(lambda feed: run_module(module, config, feed), decoding)
    return greedy_ids(step, prompt, steps)
