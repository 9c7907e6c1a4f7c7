"""Benchmark: DICOM file -> 224x224 model tensor, Rust vs the Python reference,
in the same run, on the same files.

    cargo build --release -p pneumo-imaging --example imaging_bench
    RAYON_NUM_THREADS=1 taskset -c 0 .venv/bin/python tests/imaging/bench.py [--runs 10]

Both sides are timed from reading the file to the tensor in memory (no
process start-up, no writing); the figure is the median of the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "reference"))

import preprocess as ref  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402

FILES = {
    "RG1 uncompressed (Explicit VR LE)": "RG1_UNCI.dcm",
    "RG1 JPEG 2000 lossless": "RG1_J2KR.dcm",
    "RG1 JPEG 2000 lossy": "RG1_J2KI.dcm",
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--bin", default=str(ROOT / "target" / "release" / "examples" / "imaging_bench"))
    a = ap.parse_args()
    paths = {k: get_testdata_file(v) for k, v in FILES.items()}
    r = subprocess.run(
        [a.bin, "--runs", str(a.runs), *paths.values()], capture_output=True, text=True, check=True
    )
    rust = {json.loads(line)["file"]: json.loads(line) for line in r.stdout.splitlines()}
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"CPU: {cpu}; cores available to the run: {affinity}; {platform.python_implementation()} {platform.python_version()}")
    print()
    print("| file | Rust median ms | reference median ms | ratio (ref / Rust) |")
    print("| --- | ---: | ---: | ---: |")
    for label, p in paths.items():
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            ref.preprocess(p)
            times.append((time.perf_counter() - t0) * 1e3)
        py = statistics.median(times)
        rs = rust[p]["total_ms_median"]
        print(f"| {label} | {rs:.1f} | {py:.1f} | {py / rs:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
