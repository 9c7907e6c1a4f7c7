#!/usr/bin/env bash
# The GPU check of scripts/gpu/check.sh, fitted to a short lease on a GPU
# machine that takes a few tens of MB per call: ONNX Runtime's CUDA build
# (~190 MB compressed) travels in pieces over several calls, and the export
# of the full model (~4 min) runs in the background from the first call on,
# while the other pieces arrive. The last call measures and prints the table.
#
# Here (build machine, network to the package registry):
#   scripts/gpu/relay.sh pack                # .gpu/call0 .. .gpu/callN-1, .gpu/node
# There (GPU machine), N calls back to back (it stays warm ~30 s between
# calls), call K carrying .gpu/callK:
#   OUT=... scripts/gpu/relay.sh there .gpu/callK
# Each call keeps its piece under /tmp/pneumo-gpu; the first starts the
# export (setsid: it outlives the call); once all pieces are there ONNX
# Runtime is unpacked into ORT_ROOT, the Python side measures, then the
# node's Rust runtime is timed and the table printed. A call with no piece
# (`relay.sh there`) waits again for a run a timed-out call left going.
# A further call, `OUT=... relay.sh forms`, times the plain and the fused
# graph forms side by side on the `probe` configuration (about 2-3 min).
set -uo pipefail
cd "$(dirname "$0")/../.."
ORT_VERSION=${ORT_VERSION:-1.31.1}
STATE=${STATE:-/tmp/pneumo-gpu}
ORT_ROOT=${ORT_ROOT:-/opt/ort}
# the Python package of that ONNX Runtime (a dry run on a Python other than
# 3.12 points this elsewhere and uses its own onnxruntime)
ORT_PY=${ORT_PY:-$ORT_ROOT/python}
WORK=${WORK:-/tmp/gpucheck}
CONFIG=${CONFIG:-full}
DEVICE=${DEVICE:-cuda}  # cpu with CONFIG=tiny: a dry run on any machine
ATTENTION=${ATTENTION:-ort-mha}
FORM=${FORM:-fused}      # fused: fused operators, adapters folded; plain: neither
PYTHON=${PYTHON:-python3}
FINISH_WAIT=${FINISH_WAIT:-400}    # seconds the last call waits for the Python side
ROUNDS=${ROUNDS:-2} SECONDS_EACH=${SECONDS_EACH:-3}  # timing rounds per side, seconds per round
PROFILE_RUNS=${PROFILE_RUNS:-3}    # calls profiled at the largest batch (0: none)
RUST_TIMEOUT=${RUST_TIMEOUT:-150}
CALL_BUDGET_MIB=${CALL_BUDGET_MIB:-62}  # what one call may carry, the working tree included

pack() {
  local cache="$PWD/.gpu/wheel" work
  mkdir -p "$cache"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 -d "$cache" "onnxruntime-gpu==$ORT_VERSION" || return 1
  work=$(mktemp -d)
  # python/onnxruntime: the package, its CUDA provider beside its core (where
  # ONNX Runtime looks for providers); lib/: links for the Rust side
  mkdir -p "$work/python" "$work/lib"
  (cd "$work/python" && unzip -q "$cache/onnxruntime_gpu-$ORT_VERSION"-*.whl 'onnxruntime/*' \
    && rm -f onnxruntime/capi/libonnxruntime_providers_tensorrt.so) || return 1
  for f in libonnxruntime.so."$ORT_VERSION" libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so; do
    [ -e "$work/python/onnxruntime/capi/$f" ] || { echo "the wheel has no $f" >&2; return 1; }
    ln -s "../python/onnxruntime/capi/$f" "$work/lib/$f"
  done
  echo "compressing ONNX Runtime $ORT_VERSION (a few minutes)"
  (cd "$work" && tar cf - lib python | xz -T0 -9 > ort.tar.xz) || return 1
  cargo build --release -p pneumo-inference --example inference_bench || return 1
  rm -rf .gpu/call*
  mkdir -p .gpu/call0/bin
  cp target/release/examples/inference_bench .gpu/call0/bin/ && strip .gpu/call0/bin/inference_bench
  # the working tree travels with every call: the pieces get what is left
  local tree piece total n
  tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s}')
  piece=$(( CALL_BUDGET_MIB * 1048576 - tree - $(stat -c %s .gpu/call0/bin/inference_bench) ))
  total=$(stat -c %s "$work/ort.tar.xz")
  n=$(( (total + piece - 1) / piece ))
  (cd "$work" && split -n "$n" -d -a 1 ort.tar.xz piece.) || return 1
  for k in $(seq 0 $((n - 1))); do
    mkdir -p ".gpu/call$k"
    mv "$work/piece.$k" ".gpu/call$k/"
    echo "$n" > ".gpu/call$k/pieces"
  done
  rm -rf "$work"
  echo "ONNX Runtime: $total bytes in $n pieces; working tree $tree bytes; each call carries:"
  du -sh .gpu/call*
  # for `node`: the node's binary and a graph the strict cuda mode refuses
  # (an sdpa export keeps a Shape subgraph); a call of its own (~14 MB)
  cargo build --release -p pneumo-node || return 1
  rm -rf .gpu/node && mkdir -p .gpu/node/bin
  cp target/release/pneumo-node .gpu/node/bin/ && strip .gpu/node/bin/pneumo-node
  if [ -x .venv-model/bin/python ]; then
    .venv-model/bin/python model/export.py --config tiny --random-seed 0 --precision fp16 \
      --attention sdpa --out .gpu/node/tiny-sdpa-fp16.onnx > /dev/null || return 1
  else
    echo "no .venv-model (make -f model/model.mk model-venv): .gpu/node has no sdpa graph"
  fi
  du -sh .gpu/node
}

# LD_LIBRARY_PATH for ONNX Runtime's CUDA provider: the CUDA toolkit and the
# CUDA libraries (cuDNN, cuBLAS ...) of the machine's PyTorch
cuda_library_path() {
  local dirs=/usr/local/cuda/lib64:/usr/lib/x86_64-linux-gnu site
  site=$("$PYTHON" -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null)
  for d in "$site"/nvidia/*/lib "$site"/nvidia/*/*/lib; do [ -d "$d" ] && dirs=$dirs:$d; done
  echo "$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

there() {
  local call=${1:-} n have
  OUT=${OUT:?set OUT to the folder that comes back}
  mkdir -p "$STATE/pieces" "$OUT"
  export LD_LIBRARY_PATH
  LD_LIBRARY_PATH=$(cuda_library_path)
  if [ -n "$call" ]; then
    cp "$call"/piece.* "$STATE/pieces/" && cp "$call/pieces" "$STATE/piece_count"
    [ -d "$call/bin" ] && cp -r "$call/bin" "$STATE/"
  fi
  n=$(cat "$STATE/piece_count" 2>/dev/null || echo "?")
  have=$(ls "$STATE/pieces" | wc -l)
  echo "[$(date +%T)] pieces: $have of $n"

  if [ ! -e "$STATE/python.started" ] && [ "${NO_CHECK:-0}" != 1 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$STATE/nvidia-smi.txt" 2>&1
    cat "$STATE/nvidia-smi.txt"
    rm -rf "$STATE/src" && cp -r model "$STATE/src"
    "$PYTHON" -c "import torch, onnx; print('torch', torch.__version__, 'onnx', onnx.__version__)"
    # a new session: the export outlives this call
    setsid bash -c "cd '$STATE' && '$PYTHON' src/gpu_check.py --config '$CONFIG' --device '$DEVICE' \
      --attention '$ATTENTION' --form '$FORM' --work '$WORK' --ort-python '$ORT_PY' --wait-for '$ORT_ROOT/ready' \
      --rounds '$ROUNDS' --seconds '$SECONDS_EACH' --profile '$PROFILE_RUNS' --out '$STATE/gpu_check.json'; echo \$? > '$STATE/python.rc'" \
      > "$STATE/python.log" 2>&1 < /dev/null &
    touch "$STATE/python.started"
    echo "export started in the background (log: $STATE/python.log)"
  fi

  if [ ! -e "$ORT_ROOT/ready" ] && [ "$n" != "?" ] && [ "$have" -ge "$n" ]; then
    mkdir -p "$ORT_ROOT"
    cat "$STATE"/pieces/piece.* | xz -dc -T0 | tar xf - -C "$ORT_ROOT" && touch "$ORT_ROOT/ready"
    echo "ONNX Runtime unpacked: $(ls "$ORT_ROOT"/lib)"
  fi
  [ "${NO_CHECK:-0}" = 1 ] && return 0  # deliver ONNX Runtime only (for `shapes`)
  sleep 2
  tail -n 4 "$STATE/python.log"
  [ -e "$ORT_ROOT/ready" ] || return 0

  local waited=0
  while [ ! -e "$STATE/python.rc" ] && [ "$waited" -lt "$FINISH_WAIT" ]; do
    sleep 5; waited=$((waited + 5))
    [ $((waited % 60)) -eq 0 ] && tail -n 1 "$STATE/python.log"
  done
  cp "$STATE/python.log" "$STATE/nvidia-smi.txt" "$OUT/" 2>/dev/null
  cp "$STATE/gpu_check.json" "$OUT/" 2>/dev/null
  cp "$WORK/onnxruntime.log" "$OUT/" 2>/dev/null
  if [ ! -e "$STATE/python.rc" ]; then
    echo "the Python side is still running: call 'relay.sh there' again to wait on"
    "$PYTHON" "$STATE/src/gpu_check.py" --table "$OUT" 2>/dev/null | tee "$OUT/table.md"
    return 0
  fi
  echo "gpu_check.py: exit $(cat "$STATE/python.rc")"; tail -n 12 "$STATE/python.log"

  local model fallback
  model=$("$PYTHON" -c "import json; print(json.load(open('$STATE/gpu_check.json'))['onnx'])" 2>/dev/null)
  fallback=$("$PYTHON" -c "import json; print(0 if json.load(open('$STATE/gpu_check.json'))['no_cpu_fallback'] else 1)" 2>/dev/null || echo 1)
  if [ -n "$model" ] && [ ! -e "$STATE/rust.jsonl" ]; then
    ORT_DYLIB_PATH=$(ls "$ORT_ROOT"/lib/libonnxruntime.so.*) PNEUMO_BENCH_EP=$DEVICE \
      PNEUMO_BENCH_ALLOW_CPU_FALLBACK=$fallback RUST_LOG=warn \
      timeout "$RUST_TIMEOUT" "$STATE/bin/inference_bench" "$model" 4 "$SECONDS_EACH" both 1 8 32 \
      > "$STATE/rust.jsonl" 2> "$STATE/rust.log"
    echo "inference_bench: exit $?"
  fi
  cp "$STATE/rust.jsonl" "$STATE/rust.log" "$OUT/" 2>/dev/null
  cat "$OUT/rust.jsonl" 2>/dev/null; tail -n 5 "$OUT/rust.log" 2>/dev/null
  "$PYTHON" "$STATE/src/gpu_check.py" --table "$OUT" | tee "$OUT/table.md"
}

# What a batch size seen for the first time costs on CUDA under each cuDNN
# algorithm search, and the batcher with and without the node's warm-up
# (after `NO_CHECK=1 relay.sh there ...` has delivered ONNX Runtime).
shapes() {
  local model=${1:-fixtures/models/pneumollm-tiny-fp16.onnx} search warm
  export LD_LIBRARY_PATH ORT_DYLIB_PATH PNEUMO_BENCH_EP=cuda RUST_LOG=warn
  LD_LIBRARY_PATH=$(cuda_library_path)
  ORT_DYLIB_PATH=$(ls "$ORT_ROOT"/lib/libonnxruntime.so.*)
  for search in exhaustive heuristic; do
    echo "== conv search $search"
    PNEUMO_BENCH_CONV_SEARCH=$search timeout 90 "$STATE/bin/inference_bench" "$model" 4 2 shapes 32
    for warm in 0 1; do
      PNEUMO_BENCH_CONV_SEARCH=$search PNEUMO_BENCH_WARMUP=$warm \
        timeout 90 "$STATE/bin/inference_bench" "$model" 4 2 batcher 32 | sed "s/^/warm-up $warm: /"
    done
  done
}

# The node itself on CUDA (after `NO_CHECK=1 relay.sh there ...`, with
# .gpu/node carried: bin/pneumo-node and tiny-sdpa-fp16.onnx, a graph with a
# Shape subgraph): `infer` under cuda and auto, the strict refusal and its
# override, then `serve` on CUDA with two radiographs sent to it.
node_probe() {
  local dir=${1:-.gpu/node} bin dcm=fixtures/imaging/rg1s_jpeg_extended_12bit.dcm
  local tiny=fixtures/models/pneumollm-tiny-fp16.onnx
  local keys="grep -E \"execution_provider|p_positive|precision|error|WARN\""
  # the binary can ride in an earlier call than the last piece: kept in $STATE/node
  mkdir -p "$STATE/node"
  [ "$(realpath "$dir")" = "$(realpath "$STATE/node")" ] || cp -r "$dir"/* "$STATE/node/"
  bin=$STATE/node/bin/pneumo-node
  export LD_LIBRARY_PATH PNEUMO__INFERENCE__ORT_LIBRARY
  LD_LIBRARY_PATH=$(cuda_library_path)
  PNEUMO__INFERENCE__ORT_LIBRARY=$(ls "$ORT_ROOT"/lib/libonnxruntime.so.*)
  for ep in cuda auto; do
    echo "== infer, execution_provider $ep"
    PNEUMO__INFERENCE__EXECUTION_PROVIDER=$ep "$bin" infer "$dcm" --model "$tiny" --json 2>&1 | $keys
  done
  echo "== infer, cuda, a graph with a Shape subgraph (expect a refusal)"
  PNEUMO__INFERENCE__EXECUTION_PROVIDER=cuda "$bin" infer "$dcm" --model "$STATE/node/tiny-sdpa-fp16.onnx" --json 2>&1 | $keys
  echo "== the same with allow_cpu_fallback = true"
  PNEUMO__INFERENCE__EXECUTION_PROVIDER=cuda PNEUMO__INFERENCE__ALLOW_CPU_FALLBACK=true \
    "$bin" infer "$dcm" --model "$STATE/node/tiny-sdpa-fp16.onnx" --json 2>&1 | $keys
  echo "== serve on CUDA"
  rm -rf "$STATE/var"
  PNEUMO__NODE__DATA_DIR=$STATE/var PNEUMO__INFERENCE__EXECUTION_PROVIDER=cuda \
    PNEUMO__INFERENCE__MODEL=$tiny "$bin" serve > "$STATE/serve.log" 2>&1 &
  local pid=$! http=http://127.0.0.1:8080 k
  get() { "$PYTHON" -c "import sys, urllib.request as u
try: print(u.urlopen(sys.argv[1], timeout=5).read().decode()[:1500])
except Exception as e: print(e)" "$1"; }
  for k in $(seq 1 60); do get "$http/readyz" | grep -q '"ready":true\|cuda' && break; sleep 0.5; done
  get "$http/readyz"
  "$bin" store PNEUMO@127.0.0.1:11112 "$dcm" fixtures/imaging/rg1s_bits12.dcm 2>&1 | tail -n 3
  for k in $(seq 1 40); do get "$http/api/jobs" | grep -q '"received"\|"queued"\|"analysing"' || break; sleep 0.5; done
  get "$http/api/jobs"
  kill "$pid"; wait "$pid" 2>/dev/null
  grep -iE "warm-up|execution provider|error|warn" "$STATE/serve.log" | head -n 12
}

# The plain and the fused graph side by side, same run (after `relay.sh there`
# has delivered ONNX Runtime): `gpu_check.py --compare-forms` on the `probe`
# configuration (full-size blocks, two LLaMA layers: exports in seconds).
forms() {
  [ -e "$ORT_ROOT/ready" ] || { echo "ONNX Runtime is not unpacked yet: relay.sh there first" >&2; return 1; }
  mkdir -p "$STATE/src" && cp -r model/. "$STATE/src/"
  export LD_LIBRARY_PATH
  LD_LIBRARY_PATH=$(cuda_library_path)
  (cd "$STATE" && timeout "${FORMS_TIMEOUT:-280}" "$PYTHON" src/gpu_check.py --compare-forms \
    --config "${FORMS_CONFIG:-probe}" --device "$DEVICE" --work "$WORK/forms" --ort-python "$ORT_PY" \
    --rounds "$ROUNDS" --seconds "$SECONDS_EACH" --out "$OUT/forms.json") 2>&1 | tee "$OUT/forms.log" | tail -n 14
}

case "${1:-}" in
pack) pack ;;
forms) forms ;;
there) shift; there "$@" ;;
shapes) shift; shapes "$@" ;;
node) shift; node_probe "$@" ;;
*) sed -n '2,19p' "$0"; exit 2 ;;
esac
