#!/usr/bin/env bash
# GPU check: run on the GPU machine from the repository root. Builds nothing there: it takes
# binaries built beforehand on a build machine with
#   cargo build --release --features cuda,wgpu --bin clip-vis --example train_lvis
# (carried over in target/release/) and the CPU results of the same demo, made there with
#   target/release/clip-vis demo --frames 12 --no-pictures --out target/gpu-check/cpu
# In one run of at most ~8 minutes it
#   1. runs the tiny demo video on CUDA and on wgpu (Vulkan) and compares each with the CPU
#      results (same detections and categories, scores to 1e-3, RLE strings);
#   2. prints per-stage ms per frame and FPS of both full-size presets (random weights) at
#      480x640 and 480x853, batch 1 and batch 8, on CUDA (f32; see README "GPU" for f16);
#   3. times training steps of R50 at 1024x1024 on CUDA (synthetic pictures, seeded CLIP).
# Environment: BIN, TRAIN_BIN (the binaries), OUT (scratch, default /tmp/gpu-check),
# FRAMES (frames per timing run, default 24), SKIP_WGPU=1 to skip the Vulkan run.
set -uo pipefail
BIN=${BIN:-target/release/clip-vis}
TRAIN_BIN=${TRAIN_BIN:-target/release/examples/train_lvis}
OUT=${OUT:-/tmp/gpu-check}
FRAMES=${FRAMES:-24}
CPU_RESULTS=${CPU_RESULTS:-target/gpu-check/cpu/results.json}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0

compare() { # compare GPU results.json with the CPU's
  python3 - "$1" "$CPU_RESULTS" <<'PY' || status=1
import json, sys
gpu = json.load(open(sys.argv[1])); cpu = json.load(open(sys.argv[2]))
assert len(gpu) == len(cpu), f"{len(gpu)} detections on the GPU, {len(cpu)} on the CPU"
same_cat = sum(g["category_id"] == c["category_id"] for g, c in zip(gpu, cpu))
worst = max(abs(g["score"] - c["score"]) for g, c in zip(gpu, cpu))
rle_same = sum(gs == cs for g, c in zip(gpu, cpu) for gs, cs in zip(g["segmentations"], c["segmentations"]))
rle_all = sum(len(c["segmentations"]) for c in cpu)
print(f"  vs CPU: {len(cpu)} detections, {same_cat} same category, worst score difference {worst:.2e}, {rle_same}/{rle_all} RLE masks identical")
assert same_cat == len(cpu) and worst <= 1e-3, "GPU results differ from the CPU's"
PY
}

for device in cuda wgpu; do
  if [ "$device" = wgpu ] && [ "${SKIP_WGPU:-0}" = 1 ]; then continue; fi
  echo "== demo video on $device"
  if timeout 120 "$BIN" demo --device "$device" --out "$OUT/demo_$device" --frames 12 --no-pictures > "$OUT/demo_$device.txt" 2>&1; then
    grep -E "ms per frame|class-agnostic" "$OUT/demo_$device.txt"
    if [ -f "$CPU_RESULTS" ]; then compare "$OUT/demo_$device/results.json"; fi
  else
    tail -5 "$OUT/demo_$device.txt"; status=1
  fi
done

echo "== full-size presets on cuda (random weights, $FRAMES frames each)"
for preset in rn50 convnext; do
  for size in 640x480 853x480; do
    for batch in 1 8; do
      log="$OUT/${preset}_${size}_b$batch.txt"
      if timeout 150 "$BIN" demo --device cuda --preset "$preset" --size "$size" --frames "$FRAMES" \
          --batch "$batch" --no-pictures --out "$OUT/$preset" > "$log" 2>&1; then
        ms=$(sed -n 's/.* \([0-9.]*\) ms per frame.*/\1/p' "$log" | tail -1)
        fps=$(python3 -c "print(f'{1000/float(\"$ms\"):.1f}')" 2>/dev/null || echo "?")
        echo "-- $preset ${size} batch $batch: $ms ms per frame, $fps FPS (model stages below)"
        grep -E "^  (preprocess|clip|pixel_decoder|transformer_decoder|classify|matching|masks|finish) " "$log"
      else
        echo "-- $preset ${size} batch $batch failed:"; tail -3 "$log"; status=1
      fi
    done
  done
done

echo "== R50 training steps at 1024x1024 on cuda"
if [ -x "$TRAIN_BIN" ]; then
  "$BIN" synth images --count 8 --size 640x480 --out "$OUT/synth" > /dev/null 2>&1
  if timeout 150 "$TRAIN_BIN" --device cuda --lvis-json "$OUT/synth/instances.json" \
      --images "$OUT/synth/images" --dataset coco --clip seeded:0 --preset r50 --batch 1 --iters 4 \
      --image-size 1024 --log-period 1 --checkpoint-period 1000000 --out "$OUT/train" > "$OUT/train.txt" 2>&1; then
    python3 - "$OUT/train/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [round(r["step_time"], 3) for r in rows if "step_time" in r]
print("  step times (s):", steps)
PY
  else
    tail -5 "$OUT/train.txt"; status=1
  fi
else
  echo "  $TRAIN_BIN missing: build the train_lvis example with --features cuda"
fi
exit $status
