"""``layerport bench``: a layer's engines timed side by side (needs torch)."""

from __future__ import annotations

import dataclasses

import click

from layerport.bench import DEFAULT_BENCH_THREADS
from layerport.cli.app import (
    for_each_layer,
    get_registry,
    raise_if_any_failed,
    require_dependencies,
    resolve_layer,
)
from layerport.cli.options import LayerOptions, json_option, layer_options, threads_option
from layerport.cli.outcomes import LayerOutcome
from layerport.cli.output import Progress, note, print_bench, warn
from layerport.config import LayerConfig, resolve_config
from layerport.dtypes import QUANTIZATIONS
from layerport.registry import RegisteredLayer

# A decoder's calls worth timing: single-token steps at short, long and longer
# caches, and a long prompt's prefill (issue 29's points).
DECODE_PASTS = (64, 512, 2048)
PREFILL = 512


def decoding_points(config: LayerConfig) -> dict[str, dict[str, int]]:
    """The calls a layer with a KV cache is benchmarked at, named, at batch 1: each decode
    step's past and the prefill; empty for any other layer.

    A model that declares a shorter longest cache (``[dims.past] max``, its
    trained positions) is timed at that length instead of the longer steps and
    prefill it cannot take.
    """
    streaming = config.spec.streaming
    if streaming is None or streaming.grows is None or not streaming.applies(config.params):
        return {}
    batch = {config.spec.batch_dim: 1} if config.spec.batch_dim else {}
    largest = _longest_cache(config)
    pasts = sorted({past if largest is None else min(past, largest) for past in DECODE_PASTS})
    points = {
        f"decode step, {streaming.grows} {past}": {**batch, streaming.dim: 1, streaming.grows: past}
        for past in pasts
    }
    prompt = PREFILL if largest is None else min(PREFILL, largest)
    points[f"prefill of {prompt}"] = {**batch, streaming.dim: prompt, streaming.grows: 0}
    return points


def _longest_cache(config: LayerConfig) -> int | None:
    """The declared largest size of the dim a layer's state grows along, if any."""
    streaming = config.spec.streaming
    if streaming is None or streaming.grows is None:
        return None
    return config.spec.dim(streaming.grows).max_size


@click.command()
@click.argument("layer", required=False)
@click.option(
    "--all", "all_", is_flag=True, help="Benchmark every registered layer at its defaults."
)
@layer_options
@threads_option(DEFAULT_BENCH_THREADS, 1, "Intra-op threads for torch and onnxruntime alike.")
@click.option(
    "--min-time",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Time each engine at least this long (and at least 30 calls).",
)
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZATIONS),
    default=None,
    help="Also time the quantized file (as onnxruntime-int8) beside the float32 one.",
)
@click.option(
    "--runtimes",
    "runtimes",
    metavar="LIST",
    default=None,
    help="Also time the file in each of these runtimes, comma-separated (ort-noopt, "
    "onnx-reference, openvino, ...; all skips those not installed).",
)
@json_option
def bench(
    layer: str | None,
    all_: bool,
    layer_options: LayerOptions,
    threads: int,
    min_time: float,
    quantize: str | None,
    runtimes: str | None,
    json_: bool,
) -> None:
    """Time eager PyTorch against the exported model in onnxruntime.

    Exports the layer (without verification; the engines' outputs on the
    benchmark inputs are checked against eager instead), then times the layer's
    eager module, the layer's torch reference if it declares one (for the rnn:
    torch.nn.RNN + nn.Linear with the same weights) and onnxruntime, on the same
    inputs and thread count. Engines take turns in short blocks, so a busy
    machine slows them alike; the ratio column is the file's median latency
    over each engine's (below 1: the file is faster). --quantize int8 and every
    --dtype after the first add that file as an engine (onnxruntime-int8,
    onnxruntime-float16), and --runtimes the same file in each runtime named
    (ort-noopt, openvino), timed in the same turns.

    \b
    Examples:
      layerport bench rnn --dim batch=64 --dim seq=256
      layerport bench linear -p in_features=4096 -p out_features=4096 --dim batch=64
      layerport bench --all --json
      layerport bench linear -p in_features=4096 -p out_features=4096 --quantize int8
      layerport bench rnn --dtype float32 --dtype float16 --dtype bfloat16
      layerport bench linear --runtimes ort,ort-noopt,onnx-reference
    """
    require_dependencies("torch", "onnxscript")
    from layerport.bench.benchmark import bench_layer
    from layerport.bench.timing import TimingSettings
    from layerport.runtime.runtimes import parse_runtimes, select_runtimes

    if all_ and (layer or layer_options.given()):
        raise click.UsageError(
            "--all benchmarks every layer at its defaults; drop LAYER, -p, --dim and --weights"
        )
    if not (layer or all_):
        raise click.UsageError("give a LAYER to benchmark, or --all")
    timing = TimingSettings(min_seconds=min_time)
    selected, skipped = select_runtimes(parse_runtimes(runtimes)) if runtimes else ([], {})
    for name, why in skipped.items():
        warn(f"{name} skipped: {why}")
    # The first --dtype is the layer's; each other one adds its file, timed beside.
    first, *compared = layer_options.dtypes or (None,)
    layer_options = dataclasses.replace(layer_options, dtypes=(first,) if first else ())
    if all_:

        def bench_one(registered: RegisteredLayer) -> LayerOutcome:
            config = resolve_config(
                get_registry(),
                registered.qualified_name,
                dtype=layer_options.dtype,
                seed=layer_options.seed,
            )
            # --all compares each layer in those of the precisions it declares.
            declared = [dtype for dtype in compared if dtype in registered.spec.precisions]
            return LayerOutcome(
                registered,
                bench=bench_layer(
                    config,
                    threads=threads,
                    timing=timing,
                    quantize=quantize,
                    precisions=declared,
                    runtimes=selected,
                ),
            )

        outcomes = for_each_layer("benchmarking", bench_one, dtype=layer_options.dtype)
    else:
        assert layer is not None
        config = resolve_layer(layer, layer_options)
        points = decoding_points(config) if not layer_options.dims else {}
        if points:
            # A decoder ships in whichever form is fastest: each is timed beside the others.
            forms = [
                form.name
                for form in config.spec.forms
                if form.refuses(config.params, config.dtype) is None
            ]
            largest = _longest_cache(config)
            if largest is not None and largest < max(*DECODE_PASTS, PREFILL):
                note(
                    f"the model's cache holds at most {largest} positions (its declared "
                    f"largest): the longer calls are timed at {largest}"
                )
            outcomes = []
            with Progress(len(points), "timing") as progress:
                for call, dims in points.items():
                    progress.start(call)
                    outcomes.append(
                        LayerOutcome(
                            config.layer,
                            bench=bench_layer(
                                config.with_dims({**config.dims, **dims}),
                                threads=threads,
                                timing=timing,
                                quantize=quantize,
                                precisions=compared,
                                runtimes=selected,
                                forms=forms,
                            ),
                        )
                    )
                    progress.finish(ok=True)
            print_bench(outcomes, all_, json_, calls=list(points))
            raise_if_any_failed(outcomes, json_)
            return
        outcomes = [
            LayerOutcome(
                config.layer,
                bench=bench_layer(
                    config,
                    threads=threads,
                    timing=timing,
                    quantize=quantize,
                    precisions=compared,
                    runtimes=selected,
                ),
            )
        ]
    print_bench(outcomes, all_, json_)
    raise_if_any_failed(outcomes, json_)
