"""The int8 matrix product's own speed against float32's, on this CPU (issue 27).

An int8 file cannot be faster than onnxruntime's int8 matrix product. This
times that kernel alone, ``MatMulInteger`` on inputs already quantized (no
``DynamicQuantizeLinear``, no scales: the bare product), against the float32
``MatMul`` of the same shape, interleaved by ``bench.timing.time_engines``:
uint8 activations with int8 weights (the pair onnxruntime's dynamic
quantization makes, the only one with a fast x86 kernel) and with uint8
weights. On AVX2 without VNNI the pair's products go through
``vpmaddubsw``/``vpmaddwd``; with VNNI, through ``vpdpbusd``. Prints each
median, its speed-up over float32, and the load average. Usage:

    .venv/bin/python benchmarks/int8_gemm.py [--threads 2] [--rows 64] [--size 4096]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from layerport.bench.timing import TimingSettings, time_engines


def product(
    op: str, kind: int, weight: np.ndarray, rows: int, threads: int
) -> ort.InferenceSession:
    """A session computing ``x @ weight`` with ``op`` on ``x`` of ``kind``, ``(rows, K)``."""
    out = TensorProto.FLOAT if op == "MatMul" else TensorProto.INT32
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"])],
        "product",
        [helper.make_tensor_value_info("x", kind, [rows, weight.shape[0]])],
        [helper.make_tensor_value_info("y", out, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    size, rows = args.size, args.rows
    weight = (rng.standard_normal((size, size)) * 0.02).astype(np.float32)
    signed = rng.integers(-63, 64, (size, size)).astype(np.int8)  # 7-bit, as layerport's recipe
    sessions = {
        "float32 MatMul": (product("MatMul", TensorProto.FLOAT, weight, rows, args.threads), False),
        "MatMulInteger uint8 x int8": (
            product("MatMulInteger", TensorProto.UINT8, signed, rows, args.threads),
            True,
        ),
        "MatMulInteger uint8 x uint8": (
            product(
                "MatMulInteger",
                TensorProto.UINT8,
                (signed.astype(np.int16) + 128).astype(np.uint8),
                rows,
                args.threads,
            ),
            True,
        ),
    }
    floats = rng.standard_normal((rows, size)).astype(np.float32)
    quantized = rng.integers(0, 256, (rows, size)).astype(np.uint8)
    load_before = os.getloadavg()[0]
    calls = {
        name: (lambda s=session, x=(quantized if integer else floats): s.run(None, {"x": x}))
        for name, (session, integer) in sessions.items()
    }
    samples = time_engines(calls, TimingSettings(min_seconds=args.seconds, min_calls=20))
    base = float(np.median(samples["float32 MatMul"]))
    for name, durations in samples.items():
        median = float(np.median(durations))
        print(f"{name}: {median / 1e6:.2f} ms, {base / median:.2f}x float32")
    print(f"{rows} x {size} by {size} x {size}, {args.threads} threads, "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")  # fmt: skip


if __name__ == "__main__":
    main()
