#!/usr/bin/env bash
# GPU check, for the day a CUDA machine is lent: runs the encoder, MoE and pretraining benches with --device cuda
# (bf16 autocast) plus the CUDA equality tests, and prints every row. Budget: under 5 minutes on one modern GPU.
# Each step has its own timeout so one slow step cannot eat the others' time.
#
#   bash bench/gpu_check.sh [PYTHON]          # PYTHON defaults to python3; OUT=/tmp/gpu_check by default
#
# Status: written and syntax-checked on a CPU-only machine; not yet run on a GPU (none was available).
set -uo pipefail
PY=${1:-python3}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device visible to torch; nothing to do" >&2
    exit 2
fi
"$PY" -c "import torch; print('#', torch.__version__, torch.cuda.get_device_name(0), 'bf16', torch.cuda.is_bf16_supported())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

status=0
step() {  # step NAME SECONDS CMD...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0))s"
    [ "$rc" -eq 0 ] || status=1
}

# 1. CUDA paths equal to CPU on the same inputs (fused softmax aggregation's torch path, encoders).
step tests 60 "$PY" -m pytest -q tests/test_softmax_aggr.py -k "cuda"
# 2. Encoders: fwd+bwd nodes/s at 10k..1M ANDs, bf16 autocast, plus one no-grad forward; MGVGA's encoder as peer.
step encoders 120 "$PY" bench/bench_encoders.py --device cuda --amp --forward --reps 3 \
    --encoders "deepgcn,mgvga,dag(1 iter),gcn,moe_gnn(conv)" --sizes 10000,100000,1000000
# 3. MoE block: the four issue rows, bf16, ours vs HF Mixtral (grouped_mm / eager) vs the dense bound.
step moe 60 "$PY" bench/bench_moe.py --device cuda --dtype bfloat16
# 4. Pretraining: a short MGVGA run on the built-in dataset, bf16 autocast on cuda.
step pretrain 90 "$PY" -m circuitml.cli pretrain --out "$OUT/pretrain" \
    --set run.device=cuda --set run.amp=true --set schedule.steps=30 --set schedule.warmup_steps=3 \
    --set data.generate.count=34

echo "gpu_check: logs in $OUT; overall status $status"
exit $status
