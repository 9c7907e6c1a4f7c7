"""Tiny-model throughput on the CPU: Rust (pneumo-inference) vs Python
onnxruntime, same machine, same run, same thread count, same model.

    cargo build --release -p pneumo-inference --example inference_bench
    .venv/bin/python tests/inference/bench.py --threads 2 --seconds 3 --rounds 5 --batches 1 16

Not a test (pytest does not collect it): speed is recorded in
docs/BENCHMARKS.md, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "fixtures" / "models" / "pneumollm-tiny.onnx"
EXAMPLE = ROOT / "target" / "release" / "examples" / "inference_bench"


def image_batch(b: int) -> np.ndarray:
    """The same deterministic inputs as the Rust example."""
    n_img = 3 * 224 * 224
    idx = np.arange(n_img, dtype=np.int64)
    x = np.stack([((((idx * 7919 + k * 104729) % 1000) / 500.0) - 1.0).astype(np.float32) for k in range(b)])
    return x.reshape(b, 3, 224, 224)


def python_session(threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(MODEL), opts, providers=["CPUExecutionProvider"])


def python_once(s: ort.InferenceSession, b: int, seconds: float) -> float:
    x = image_batch(b)
    s.run(["logits"], {"image": x})
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        s.run(["logits"], {"image": x})
        n += 1
    return n * b / (time.perf_counter() - t0)


def rust_once(threads: int, seconds: float, mode: str, b: int) -> float:
    if not EXAMPLE.exists():
        raise SystemExit("build it first: cargo build --release -p pneumo-inference --example inference_bench")
    env = dict(os.environ, RUST_LOG="error")
    r = subprocess.run([str(EXAMPLE), str(MODEL), str(threads), str(seconds), mode, str(b)],
                       capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    (line,) = [x for x in lines if "mode" in x]
    return line["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()}, "
          f"onnxruntime {ort.__version__}, threads {a.threads}")
    # interleave the sides round by round, so that changes in machine load hit both
    sess = python_session(a.threads)
    res: dict[tuple[str, int], list[float]] = {}
    for _ in range(a.rounds):
        for b in a.batches:
            res.setdefault(("python", b), []).append(python_once(sess, b, a.seconds))
            res.setdefault(("rust", b), []).append(rust_once(a.threads, a.seconds, "session", b))
        bmax = max(a.batches)
        res.setdefault(("batcher", bmax), []).append(rust_once(a.threads, a.seconds, "batcher", bmax))
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"# medians of {a.rounds} interleaved rounds of {a.seconds} s each")
    print("| batch | Python onnxruntime img/s | Rust img/s | Rust / Python |")
    print("| ---: | ---: | ---: | ---: |")
    for b in a.batches:
        p, r = med[("python", b)], med[("rust", b)]
        print(f"| {b} | {p:.1f} | {r:.1f} | {r / p:.2f} |")
    bmax = max(a.batches)
    print(f"# Rust through the batcher (max_batch {bmax}, {4 * bmax} concurrent requests): "
          f"{med[('batcher', bmax)]:.1f} img/s")
    for k, v in sorted(res.items()):
        print(f"# {k[0]} batch {k[1]}: " + ", ".join(f"{x:.1f}" for x in v))
    print(f"# load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
