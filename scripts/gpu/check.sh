#!/usr/bin/env bash
# The GPU checks of the model and inference issues, in one call on a GPU
# machine (see scripts/gpu/README.md). Writes its logs and results to $OUT
# and prints the summary table last.
#
#   OUT=... ORT_LIB=/opt/ort/lib/libonnxruntime.so.1.31.1 ORT_PY=/opt/ort/python scripts/gpu/check.sh
#
# ORT_LIB: ONNX Runtime with its CUDA provider beside it (for the Rust side);
# ORT_PY: the same ONNX Runtime's Python package (for the Python side).
# EXTRA (default .gpu/extra): what scripts/gpu/prepare.sh made.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to the folder that comes back}
EXTRA=${EXTRA:-.gpu/extra}
ORT_LIB=${ORT_LIB:?set ORT_LIB to libonnxruntime.so with the CUDA provider beside it}
export PYTHONPATH=${ORT_PY:?set ORT_PY to that ONNX Runtime Python package\'s folder}
WORK=${WORK:-/tmp/gpucheck}
CONFIG=${CONFIG:-full}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of this script (CONFIG=tiny)
# all | export | measure: export and measure in two calls when one is too short
# (the graph stays in $WORK on the warm machine between calls)
STAGE=${STAGE:-all}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt"
if ! "$PYTHON" -c "import onnx" 2>/dev/null; then
  # a wheel is a zip: unpacking needs no pip
  for w in "$EXTRA"/wheels/*.whl; do "$PYTHON" -m zipfile -e "$w" /tmp/pyextra; done
  export PYTHONPATH=$PYTHONPATH:/tmp/pyextra
fi
"$PYTHON" -c "import onnxruntime as o, torch; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__)"

# export, parity, placement, PyTorch vs ONNX Runtime (Python)
timeout "${PY_TIMEOUT:-480}" "$PYTHON" model/gpu_check.py --config "$CONFIG" --device "$DEVICE" --work "$WORK" \
  --stage "$STAGE" --out "$OUT/gpu_check.json" > "$OUT/python.log" 2>&1
echo "gpu_check.py: exit $?"; tail -n 12 "$OUT/python.log"
cp "$WORK/onnxruntime.log" "$OUT/" 2>/dev/null
[ "$STAGE" = export ] && exit 0

# the node's runtime on the same graph; strict unless Python saw CPU nodes
model=$("$PYTHON" -c "import json; print(json.load(open('$OUT/gpu_check.json'))['onnx'])" 2>/dev/null)
fallback=$("$PYTHON" -c "import json; print(0 if json.load(open('$OUT/gpu_check.json'))['no_cpu_fallback'] else 1)" 2>/dev/null || echo 1)
if [ -n "$model" ]; then
  ORT_DYLIB_PATH=$ORT_LIB PNEUMO_BENCH_EP=$DEVICE PNEUMO_BENCH_ALLOW_CPU_FALLBACK=$fallback RUST_LOG=warn \
    timeout "${RUST_TIMEOUT:-110}" "$EXTRA/bin/inference_bench" "$model" 4 4 session 1 8 32 \
    > "$OUT/rust.jsonl" 2> "$OUT/rust.log"
  echo "inference_bench: exit $?"; cat "$OUT/rust.jsonl"; tail -n 5 "$OUT/rust.log"
fi
"$PYTHON" model/gpu_check.py --table "$OUT" | tee "$OUT/table.md"
