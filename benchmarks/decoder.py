"""A whole decoder model file, its standard and fused files against eager (issues 24 and 29).

The model file (a Llama checkpoint's embedding, blocks, norm and head) is
exported in each form with its verification (prefill + decode steps == the
whole pass; a form that fails is not timed), then timed with
``bench.timing.time_engines``, the engines taking turns: one decode step
(batch 1) after a cache of 64, 512 and 2048 tokens, and a prefill of 512
tokens. The engines: layerport's eager model (its cache as tensors in and
out), transformers' ``LlamaForCausalLM`` with its ``DynamicCache`` when the
checkpoint is one (``--llama-config`` names its config.json), onnxruntime
on each file with every graph optimization, as ``run`` does, and the fused
file as ``generate`` runs it, its cache in bound buffers written in place
(``runtime.bound``). Prints a Markdown table of medians and the fused
file's ratios to transformers (or eager), and the load average before and
after. Usage:

    .venv/bin/python benchmarks/decoder.py decoder.toml decoder.safetensors \\
        [--llama-config config.json] [--seconds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from layerport.plugin import export_layer, get_registry, resolve_config
from layerport.runtime.bound import bound_model
from layerport.runtime.session import Session, SessionSettings
from layerport.verify.engines import BoundCacheEngine

CASES = {
    "decode step, past 64": (1, 64),
    "decode step, past 512": (1, 512),
    "decode step, past 2048": (1, 2048),
    "prefill of 512": (512, 0),
}


def transformers_call(config_path: Path, weights: Path, seq: int, past: int) -> Any:
    """transformers' own model, one call of ``seq`` ids after a cache of ``past``."""
    import transformers
    from safetensors.torch import load_file

    model = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_json_file(config_path))
    model.load_state_dict(load_file(weights))
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (1, past + seq))
    with torch.no_grad():
        filled = model(ids[:, :past], use_cache=True).past_key_values if past else None
    layers = [(layer.keys, layer.values) for layer in filled.layers] if filled else []

    def call() -> Any:
        cache = transformers.DynamicCache()
        for index, (keys, values) in enumerate(layers):
            cache.update(keys, values, index)
        with torch.no_grad():
            return model(ids[:, past:], past_key_values=cache, use_cache=True).logits

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("weights", type=Path)
    parser.add_argument("--llama-config", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    from layerport.bench.timing import TimingSettings, time_engines
    from layerport.eager.build import build_module, torch_arguments

    load_before = os.getloadavg()
    config = resolve_config(get_registry(), str(args.model), weights=args.weights)
    sessions = {}
    for form in ("standard", "fused"):
        result = export_layer(config, trials=1, form=form)
        assert result.report is not None and result.report.passed, form
        sessions[form] = ort.InferenceSession(
            result.model_bytes, options, providers=["CPUExecutionProvider"]
        )
        if form == "fused":
            fused = onnx.load_from_string(result.model_bytes)
    # The fused file as generate runs it: the cache in bound buffers, written in place.
    variant = bound_model(fused)
    assert variant is not None
    assert config.spec.streaming is not None
    bound = BoundCacheEngine(
        Session(variant, "bound", SessionSettings(threads=args.threads)),
        config.spec.streaming.carry,
    )
    module = build_module(config)
    rows = []
    for case, (seq, past) in CASES.items():
        dims = {**config.dims, "batch": 1, "seq": seq, "past": past}
        inputs = config.with_dims(dims).random_inputs()
        arguments = torch_arguments(config, inputs)

        def eager(arguments: list[Any] = arguments) -> Any:
            with torch.no_grad():
                return module(*arguments)

        calls: dict[str, Any] = {"eager": eager}
        if args.llama_config is not None:
            calls["transformers"] = transformers_call(args.llama_config, args.weights, seq, past)
        for form, session in sessions.items():
            calls[f"onnxruntime {form}"] = partial(session.run, None, inputs)
        calls["onnxruntime fused, bound"] = bound.bind(inputs)
        samples = time_engines(calls, TimingSettings(min_seconds=args.seconds, min_calls=10))
        medians = {name: float(np.median(times)) / 1e6 for name, times in samples.items()}
        rows.append((case, medians))
    names = list(rows[0][1])
    against = "transformers" if "transformers" in names else "eager"
    ratios = ("onnxruntime fused", "onnxruntime fused, bound")
    print(
        "| call | "
        + " | ".join(f"{name} ms" for name in names)
        + "".join(f" | {name} / {against}" for name in ratios)
        + " |"
    )
    print("|---" * (len(names) + 3) + "|")
    for case, medians in rows:
        cells = " | ".join(f"{medians[name]:.3g}" for name in names)
        shares = " | ".join(f"{medians[name] / medians[against]:.3f}" for name in ratios)
        print(f"| {case} | {cells} | {shares} |")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
