#!/usr/bin/env bash
# One prepared GPU measurement (< 8 minutes): set up, then print one table of
#   forward latency p50/p99, batch 1, of the LLM-free planner (tiny_cpu, vad_tiny; Dual when
#   a stage-2 checkpoint is there), eager vs torch.compile (CUDA graphs) vs TensorRT, fp32 and fp16;
#   the node's TensorRT backend: `dima export --tensorrt` of the shipped checkpoint, the engine
#   loaded through load_planner(backend="tensorrt") (what the node's `backend: tensorrt` does)
#   and compared with torch on the same frames (max |difference| of the trajectories);
#   and the planner node end to end on a replayed 1600x900 JPEG bag (device cuda), with the
#   TensorRT backend when the engine was built.
# Without a CUDA device it runs the CPU fallback (tiny_cpu, eager + onnxruntime, few iterations)
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
  echo "no CUDA device: CPU fallback (tiny_cpu only, eager and onnxruntime; the TensorRT row says why it needs a GPU here)"
  FWD=(--device cpu --configs tiny_cpu --modes eager,onnxruntime,tensorrt --iters 10 --warmup 2)
  DUAL=()
fi
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
timeout 300 $PY tools/bench_forward.py "${FWD[@]}" "${DUAL[@]}" --json "$OUT/forward_fp32.json" | tee "$OUT/forward_fp32.txt"
if [ "$DEVICE" = cuda ]; then
  timeout 200 $PY tools/bench_forward.py "${FWD[@]}" --precision fp16 --json "$OUT/forward_fp16.json" | tee "$OUT/forward_fp16.txt"
  # The node's TensorRT backend: export, load through the backend interface, compare with torch.
  TRT_BACKEND=torch
  if timeout 240 $PY -m dima_planner.cli export --checkpoint checkpoints/dima_tiny --out "$OUT/dima_tiny_trt" \
       --tensorrt --precision fp32 >"$OUT/trt_export.log" 2>&1; then
    timeout 120 $PY - "$OUT/dima_tiny_trt" <<'PYEOF' | tee "$OUT/trt_backend.txt" && TRT_BACKEND=tensorrt
import sys
import numpy as np
from dima_planner.data.geometry import RIG_HW, load_rig
from dima_planner.data.sample import CAMERAS
from dima_planner.inference import load_planner
from dima_planner.data.inputs import scale_intrinsics
ckpt = sys.argv[1]
rig = load_rig("")
ks = np.stack([scale_intrinsics(rig.intrinsics[c], RIG_HW, (900, 1600)) for c in CAMERAS])
c2l = np.stack([np.linalg.inv(rig.lidar2ego) @ rig.cam2ego[c] for c in CAMERAS])
rng = np.random.default_rng(0)
frames = [[rng.integers(0, 255, (900, 1600, 3), dtype=np.uint8) for _ in CAMERAS] for _ in range(4)]
plans = {}
for backend in ("torch", "tensorrt"):
    p = load_planner(ckpt, "cuda", backend=backend)
    plans[backend] = [p.plan(f, ks, c2l, 2, stamp_ns=int(i * 5e8), lidar2world=np.eye(4)).trajectories
                      for i, f in enumerate(frames)]
    lat = [p.plan(frames[0], ks, c2l, 2).latency_ms for _ in range(20)]
    print(f"backend {backend}: model p50 {np.median(lat):.2f} ms ({type(p.model).__name__})")
err = max(float(np.abs(a - b).max()) for a, b in zip(plans["torch"], plans["tensorrt"]))
print(f"TensorRT backend vs torch, 4 chained frames: max |trajectory difference| {err:.2e} m")
sys.exit(0 if err < 1e-2 else 1)
PYEOF
  else
    echo "TensorRT export failed: tail of $OUT/trt_export.log:"; tail -5 "$OUT/trt_export.log"
  fi
  LEFT=$(( 470 - ($(date +%s) - START) ))
  if [ "$LEFT" -gt 90 ]; then
    CKPT_ARGS=()
    [ "$TRT_BACKEND" = tensorrt ] && CKPT_ARGS=(--checkpoint "$OUT/dima_tiny_trt" --backend tensorrt)
    timeout "$LEFT" $PY tools/bench_planner_replay.py --compressed --phases alone --device cuda --seconds 6 \
      "${CKPT_ARGS[@]}" --json "$OUT/node_e2e.json" | tail -4 || echo "node end to end: did not finish in the time left"
  else
    echo "node end to end: skipped, ${LEFT}s left of the 8-minute budget"
  fi
fi
echo
echo "== summary ($DEVICE, $(($(date +%s) - START)) s)"
$PY - "$OUT" <<'PYEOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"{'model':<26}{'mode':<12}{'prec':<6}{'p50 ms':>9}{'p99 ms':>9}{'FPS':>8}")
for f in sorted(out.glob("forward_*.json")):
    for r in json.loads(f.read_text())["rows"]:
        if "p50_ms" in r:
            print(f"{r['config']:<26}{r['mode']:<12}{r['precision']:<6}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['fps']:>8.1f}")
        else:
            print(f"{r['config']:<26}{r['mode']:<12}{r['precision']:<6}  not run: {r['error'][:60]}")
trt = out / "trt_backend.txt"
print(trt.read_text().strip() if trt.is_file() else "TensorRT backend: not run (no CUDA device or no engine)")
e2e = out / "node_e2e.json"
if e2e.is_file():
    doc = json.loads(e2e.read_text())
    r = doc["rows"][0]
    print(f"node e2e (cuda{', tensorrt backend' if 'dima_tiny_trt' in str(doc.get('checkpoint', '')) else ''}): {r['paths']}/{r['front_images']} planned, {r['rate_hz']:.2f} Hz, e2e p50 "
          f"{r['e2e_p50_ms']:.0f} ms p99 {r['e2e_p99_ms']:.0f} ms, model p50 {r['model_p50_ms']:.1f} ms")
PYEOF
