"""The fused attention form against the standard one and eager torch (issue 29 item 1).

A ``decoder_block`` (embed_dim 256, 8 heads over 2 key/value heads,
intermediate_size 688, Llama's RMSNorm and gated MLP), exported in each form
with its verification (the fused file must pass the stream proof, or nothing
is timed), then timed with ``bench.timing.time_engines``, the engines taking
turns: one decode step (batch 1, seq 1) after a cache of 64, 512 and 2048
tokens, and a prefill of 512 tokens on an empty cache. onnxruntime's CPU
provider runs both files with every graph optimization, as ``run`` does; eager
is the module itself under ``torch.no_grad``. Prints a Markdown table of
medians, and the load average before and after. Usage:

    .venv/bin/python benchmarks/fused_attention.py [--seconds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import numpy as np
import onnxruntime as ort
import torch

from layerport.plugin import export_layer, get_registry, resolve_config

PARAMS = {"embed_dim": 256, "num_heads": 8, "num_kv_heads": 2, "intermediate_size": 688}
CASES = {
    "decode step, past 64": (1, 64),
    "decode step, past 512": (1, 512),
    "decode step, past 2048": (1, 2048),
    "prefill of 512": (512, 0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="timed seconds per engine and case"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch's and onnxruntime's threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    from layerport.bench.timing import TimingSettings, time_engines

    load_before = os.getloadavg()
    config = resolve_config(get_registry(), "decoder_block", PARAMS)
    files = {}
    for form in ("standard", "fused"):
        result = export_layer(config, trials=1, form=form)
        assert result.report is not None and result.report.passed
        session = ort.InferenceSession(
            result.model_bytes, options, providers=["CPUExecutionProvider"]
        )
        files[form] = (session, result.node_count)
    from layerport.eager.build import build_module

    module = build_module(config)
    generator = np.random.default_rng(0)
    rows = []
    for case, (seq, past) in CASES.items():
        x = generator.standard_normal((1, seq, 256)).astype(np.float32)
        cache = generator.standard_normal((1, 2, past, 32)).astype(np.float32)
        feeds = {
            "x": x,
            "past_key": cache,
            "past_value": cache,
            "padding_mask": np.zeros((1, seq), dtype=bool),
            "past_padding": np.zeros((1, past), dtype=bool),
        }
        tensors = [torch.from_numpy(value) for value in feeds.values()]

        def eager(tensors: list[torch.Tensor] = tensors) -> object:
            with torch.no_grad():
                return module(*tensors)

        calls = {form: partial(session.run, None, feeds) for form, (session, _) in files.items()}
        calls["eager"] = eager
        samples = time_engines(calls, TimingSettings(min_seconds=args.seconds, min_calls=30))
        medians = {name: float(np.median(times)) / 1e6 for name, times in samples.items()}
        rows.append((case, medians, {name: len(times) for name, times in samples.items()}))
    load_after = os.getloadavg()
    print(
        f"threads: torch {torch.get_num_threads()}; load average before {load_before}, after {load_after}"
    )
    print(f"nodes: standard {files['standard'][1]}, fused {files['fused'][1]}")
    print("| case | standard | fused | fused / standard | eager torch | fused / eager | calls |")
    print("|---|---|---|---|---|---|---|")
    for case, medians, counts in rows:
        standard, fused, eager_ms = medians["standard"], medians["fused"], medians["eager"]
        print(
            f"| {case} | {standard:.3f} ms | {fused:.3f} ms | {fused / standard:.2f} | "
            f"{eager_ms:.3f} ms | {fused / eager_ms:.2f} | {min(counts.values())} |"
        )


if __name__ == "__main__":
    main()
