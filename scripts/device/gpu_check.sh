#!/usr/bin/env bash
# GPU check, run on a machine with an NVIDIA GPU from the repository root, with a release binary
# built by `CARGO_TARGET_DIR=target/cuda cargo build --release --features cuda` (carried to the
# GPU machine) and the CPU results of the same demo at target/gpu-check/cpu/results.json, made by
# `target/release/clip-vis demo --out target/gpu-check/cpu --frames 12 --no-pictures`:
#   1. the tiny demo video on the GPU gives the CPU's results (same detections and categories,
#      scores to 1e-3, masks compared pixel-free by RLE string);
#   2. per-stage time per frame of the full-size presets (random weights) on 720p frames
#      resized to short side 480.
set -euo pipefail
BIN=${BIN:-target/cuda/release/clip-vis}
OUT=${OUT:-/tmp/gpu-check}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p "$OUT"
$BIN demo --out "$OUT/gpu_demo" --frames 12 --no-pictures > "$OUT/gpu_demo.txt" 2>&1 || { cat "$OUT/gpu_demo.txt"; exit 1; }
cat "$OUT/gpu_demo.txt" | tail -12
python3 - "$OUT/gpu_demo/results.json" target/gpu-check/cpu/results.json <<'PY' || echo "(python3 missing: compare $OUT/gpu_demo/results.json by hand)"
import json, sys
gpu = json.load(open(sys.argv[1])); cpu = json.load(open(sys.argv[2]))
assert len(gpu) == len(cpu), (len(gpu), len(cpu))
key = lambda r: (-r["score"], r["category_id"])
gpu.sort(key=key); cpu.sort(key=key)
same_cat = sum(g["category_id"] == c["category_id"] for g, c in zip(gpu, cpu))
worst = max(abs(g["score"] - c["score"]) / max(abs(c["score"]), 1e-6) for g, c in zip(gpu, cpu))
rle_same = sum(gs["counts"] == cs["counts"] for g, c in zip(gpu, cpu) for gs, cs in zip(g["segmentations"], c["segmentations"]))
rle_all = sum(len(c["segmentations"]) for c in cpu)
print(f"GPU vs CPU: {len(cpu)} detections, {same_cat} same category, worst relative score difference {worst:.2e}, {rle_same}/{rle_all} RLE strings identical")
PY
for preset in rn50 convnext; do
  echo "== $preset, 720p -> 480p"
  $BIN demo --preset $preset --size 1280x720 --frames 24 --no-pictures --out "$OUT/$preset" 2>&1 | tail -10
done
