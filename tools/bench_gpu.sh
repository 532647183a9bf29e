#!/usr/bin/env bash
# One prepared GPU measurement (< 8 minutes): set up, then print one table of
#   forward latency p50/p99, batch 1, of the LLM-free planner (tiny_cpu, vad_tiny; Dual when
#   a stage-2 checkpoint is there), eager vs torch.compile (CUDA graphs) vs TensorRT, fp32 and fp16;
#   and the planner node end to end on a replayed 1600x900 JPEG bag (device cuda).
# Without a CUDA device it runs the CPU fallback (tiny_cpu, eager + compiled, few iterations)
# so that the script itself stays tested.
#   bash tools/bench_gpu.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/bench_gpu}
mkdir -p "$OUT"
START=$(date +%s)
[ -x .venv/bin/python ] || make setup >"$OUT/setup.log" 2>&1
PY=.venv/bin/python
if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  DEVICE=cuda
  $PY -c "import torch_tensorrt" 2>/dev/null || timeout 240 $PY -m pip install -q torch-tensorrt >"$OUT/trt_install.log" 2>&1 \
    || echo "torch-tensorrt not installable here: TensorRT rows will say so"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  FWD=(--device cuda --configs tiny_cpu,vad_tiny --modes eager,compiled,tensorrt --iters 200 --warmup 20)
  DUAL=()
  [ -f checkpoints/dima_tiny_stage2/mllm.safetensors ] && DUAL=(--dual-checkpoint checkpoints/dima_tiny_stage2)
else
  DEVICE=cpu
  echo "no CUDA device: CPU fallback (tiny_cpu only, eager; compiled and TensorRT rows say why they need a GPU here)"
  FWD=(--device cpu --configs tiny_cpu --modes eager,tensorrt --iters 10 --warmup 2)
  DUAL=()
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
timeout 300 $PY tools/bench_forward.py "${FWD[@]}" "${DUAL[@]}" --json "$OUT/forward_fp32.json" | tee "$OUT/forward_fp32.txt"
if [ "$DEVICE" = cuda ]; then
  timeout 200 $PY tools/bench_forward.py "${FWD[@]}" --precision fp16 --json "$OUT/forward_fp16.json" | tee "$OUT/forward_fp16.txt"
  LEFT=$(( 470 - ($(date +%s) - START) ))
  if [ "$LEFT" -gt 90 ]; then
    timeout "$LEFT" $PY tools/bench_planner_replay.py --compressed --phases alone --device cuda --seconds 6 \
      --json "$OUT/node_e2e.json" | tail -4 || echo "node end to end: did not finish in the time left"
  else
    echo "node end to end: skipped, ${LEFT}s left of the 8-minute budget"
  fi
fi
echo
echo "== summary ($DEVICE, $(($(date +%s) - START)) s)"
$PY - "$OUT" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"{'model':<26}{'mode':<10}{'prec':<6}{'p50 ms':>9}{'p99 ms':>9}{'FPS':>8}")
for f in sorted(out.glob("forward_*.json")):
    for r in json.loads(f.read_text())["rows"]:
        if "p50_ms" in r:
            print(f"{r['config']:<26}{r['mode']:<10}{r['precision']:<6}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['fps']:>8.1f}")
        else:
            print(f"{r['config']:<26}{r['mode']:<10}{r['precision']:<6}  not run: {r['error'][:60]}")
e2e = out / "node_e2e.json"
if e2e.is_file():
    r = json.loads(e2e.read_text())["rows"][0]
    print(f"node e2e (cuda): {r['paths']}/{r['front_images']} planned, {r['rate_hz']:.2f} Hz, e2e p50 "
          f"{r['e2e_p50_ms']:.0f} ms p99 {r['e2e_p99_ms']:.0f} ms, model p50 {r['model_p50_ms']:.1f} ms")
PYEOF
