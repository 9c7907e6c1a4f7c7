#!/usr/bin/env bash
# Prepares, on the build machine, what scripts/gpu/check.sh needs on a GPU
# machine that has no Rust toolchain and no network: the Rust benchmark
# binary and the wheels of `onnx` (for the exporter), in .gpu/extra
# (ignored by git; carry it to the GPU machine).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
cargo build --release -p pneumo-inference --example inference_bench
rm -rf .gpu/extra && mkdir -p .gpu/extra/bin .gpu/extra/wheels
cp target/release/examples/inference_bench .gpu/extra/bin/
strip .gpu/extra/bin/inference_bench
# The exporter's pins (model/requirements.txt), for the GPU machine's Python.
PY_VERSION=${GPU_PYTHON_VERSION:-3.12}
pins=$(grep -E '^(onnx|protobuf|ml_dtypes)==' model/requirements.txt)
# shellcheck disable=SC2086
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  -d .gpu/extra/wheels $pins
du -sh .gpu/extra
