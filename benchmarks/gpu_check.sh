#!/usr/bin/env bash
# GPU check of kdkit's GPU paths, sized to finish in under 8 minutes on one CUDA GPU:
#   1. the tiny HAWAII twins (hawaii_7b, llava15_7b) trained in bf16 through torchrun with NCCL (1 process, DDP);
#   2. python -m benchmarks.mola at CLIP-L width in bf16 on the GPU (24 layers, batch 8);
#   3. python -m benchmarks.scale (the 7B student at real widths: 24 CLIP layers, 2 Llama layers) in bf16 on the GPU.
# Writes OUT_DIR/summary.json (one JSON object: per part its exit status, seconds and result) and prints it.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # default OUT_DIR: gpu_check
#
# On a machine without a CUDA device it says so and exits 0 without running anything.
# GPU_CHECK_DRY=1 runs the same parts on the CPU at CI sizes (fp32, gloo): a check of the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-gpu_check}

if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
    DEVICE=cpu PRECISION=fp32 BACKEND=gloo SLOW=3  # time limits x3: a shared CPU is slow
    MOLA=(--quick) SCALE=(--quick)
else
    if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "gpu_check: no CUDA device (torch.cuda.is_available() is False): nothing to check on this machine"
        exit 0
    fi
    DEVICE=cuda PRECISION=bf16 BACKEND=nccl SLOW=1
    MOLA=(--layers 24 --batch 8 --repeats 21) SCALE=(--tower-layers 24 --llm-layers 2 --steps 3)
    "$PY" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(0), 'torch', torch.__version__, 'CUDA', torch.version.cuda)"
fi
mkdir -p "$OUT"

# part NAME LIMIT_SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record status and seconds
part() {
    local name=$1 limit=$(($2 * SLOW))
    shift 2
    local start=$SECONDS
    echo "gpu_check: $name ..."
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$rc $((SECONDS - start))" > "$OUT/$name.status"
    echo "gpu_check: $name exit $rc in $((SECONDS - start)) s (log: $OUT/$name.log)"
}

# time limits add up to 8 minutes on a GPU
part fixtures 60 "$PY" -m kdkit_plugins.fixtures "$OUT/tiny"
for twin in hawaii_7b llava15_7b; do
    part "twin_$twin" 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m kdkit run \
        "recipes/tiny/hawaii/$twin.yaml" --data-root "$OUT/tiny" --output-dir "$OUT/runs/$twin" \
        --set "runtime.device=$DEVICE" --set "runtime.precision=$PRECISION" \
        --set runtime.distributed.strategy=ddp --set "runtime.distributed.backend=$BACKEND"
done
part mola 90 "$PY" -m benchmarks.mola --device "$DEVICE" --dtype "$PRECISION" "${MOLA[@]}"
part scale 150 "$PY" -m benchmarks.scale --device "$DEVICE" --precision "$PRECISION" "${SCALE[@]}"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
summary = {}
for status in sorted(out.glob("*.status")):
    name = status.stem
    rc, seconds = (int(x) for x in status.read_text().split())
    entry = {"exit": rc, "seconds": seconds}
    log = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()
    if name.startswith("twin_"):  # the last logged losses of the run
        metrics = out / "runs" / name[len("twin_"):] / "metrics.jsonl"
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        entry["last_losses"] = next((r["losses"] for r in reversed(rows) if "losses" in r), None)
    elif log:
        try:
            entry["result"] = json.loads(log[-1])
        except json.JSONDecodeError:
            entry["last_line"] = log[-1]
    summary[name] = entry
summary["ok"] = all(v["exit"] == 0 for v in summary.values() if isinstance(v, dict))
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps(summary))
EOF
