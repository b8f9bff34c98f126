#!/usr/bin/env python3
"""PyTorch side of the clip-vis pixel-decoder benchmark (MSDeformAttn pixel decoder, CPU).

Pinned reference environment (CPU only; only PyPI is needed; same venv as
scripts/fixtures/gen_pixel_decoder.py):

    python3 -m venv /opt/refenv
    /opt/refenv/bin/pip install "torch==2.5.1" "safetensors" "numpy<2" "transformers==4.46.3"

    measured with python 3.11.7, torch 2.5.1 (PyPI default wheel, 2.5.1+cu124, run on CPU),
    transformers 4.46.3, safetensors 0.8.0, numpy 1.26.4

Run from the repository root (nothing is downloaded; weights and inputs are random):

    /opt/refenv/bin/python benches/pixel_decoder_torch.py --threads 2 --repeats 3 --height 480 --width 640
    /opt/refenv/bin/python benches/pixel_decoder_torch.py --threads 2 --repeats 3 --presets r50

What is timed: the functional reference `pixel_decoder_forward` of
scripts/fixtures/gen_pixel_decoder.py (imported, not copied), i.e. Mask2Former's
MSDeformAttnPixelDecoder.forward_features as CLIP-VIS uses it, resized to the full CLIP-VIS
configuration by overriding that module's `PD` dict:
    conv_dim 256, mask_dim 256, GroupNorm 32, 8 heads, 4 points, 3 levels (res3..res5),
    6 encoder layers, FFN 1024, 1 FPN level (res2), common stride 4.
Its attention core is transformers' pure-PyTorch `multi_scale_deformable_attention`
(F.grid_sample based), the same algorithm as CLIP-VIS's `ms_deform_attn_core_pytorch`, which is
what CLIP-VIS runs on CPU (its MultiScaleDeformableAttention CUDA op is unavailable there); so
this is the like-for-like CPU comparison. The forward includes the sine position embeddings,
reference points, input projections, 6 encoder layers, the res2 FPN level and mask_features.

Presets (backbone channels of res2..res5):
    pixel_decoder_r50        256, 512, 1024, 2048
    pixel_decoder_convnext   128, 256, 512, 1024   (ConvNeXt-B)
Inputs: batch 1, random N(0, 1) features at strides 4/8/16/32 of --height x --width, sized
ceil(H/s) x ceil(W/s) (480x640 -> 120x160, 60x80, 30x40, 15x20). Weights: the fixture
generator's random init (`pd_params`), float32, seeded. Everything runs in float32 under
torch.no_grad() with torch.set_num_threads(threads) (and deterministic algorithms off, which
the imported module switches on). Each preset: one warm-up run, then `repeats` timed runs.

Output: one JSON object per line on stdout,
    {"block": "pixel_decoder_r50", "threads": 2, "height": 480, "width": 640,
     "median_ms": ..., "runs_ms": [...]}
and nothing else; progress goes to stderr.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "fixtures"))
import gen_pixel_decoder as gpd  # noqa: E402  (sets 1 thread + deterministic algorithms on import)

import transformers  # noqa: E402

PRESETS = {
    "r50": [256, 512, 1024, 2048],
    "convnext": [128, 256, 512, 1024],
}
FEATURES = ("res2", "res3", "res4", "res5")
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}

FULL = dict(conv_dim=256, mask_dim=256, gn_groups=32, heads=8, points=4, levels=3, enc_layers=6,
            ffn=1024, common_stride=4, strides=dict(STRIDES))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_params(preset, height, width, gen):
    """Configures the reference module for `preset` at height x width; returns its random params."""
    gpd.PD.update(FULL)
    gpd.PD["in_channels"] = dict(zip(FEATURES, PRESETS[preset]))
    gpd.PD["image_hw"] = (height, width)
    return gpd.pd_params(gen)


def make_block(preset, height, width):
    """Configures the reference module for `preset` and returns a zero-argument callable."""
    gen = torch.Generator().manual_seed(20240703)
    params = build_params(preset, height, width, gen)
    feats = {}
    for f in FEATURES:
        s = STRIDES[f]
        shape = (1, gpd.PD["in_channels"][f], -(-height // s), -(-width // s))
        feats[f] = torch.randn(shape, generator=gen, dtype=torch.float32)
    n_params = sum(v.numel() for v in params.values())
    log(f"pixel_decoder_{preset}: {n_params / 1e6:.2f} M params, inputs "
        + ", ".join(f"{f} {tuple(feats[f].shape[1:])}" for f in FEATURES))
    return lambda: gpd.pixel_decoder_forward(params, feats, core="hf")["mask_features"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--presets", default=",".join(PRESETS),
                    help="comma-separated subset of " + ",".join(PRESETS))
    args = ap.parse_args()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    for p in presets:
        if p not in PRESETS:
            ap.error(f"unknown preset {p!r}; expected one of {list(PRESETS)}")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.height < 32 or args.width < 32:
        ap.error("--height and --width must be >= 32")

    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {torch.get_num_threads()}, input {args.height}x{args.width}")

    with torch.no_grad():
        for preset in presets:
            block = f"pixel_decoder_{preset}"
            run = make_block(preset, args.height, args.width)
            t0 = time.perf_counter()
            out = run()
            log(f"{block}: warm-up {1e3 * (time.perf_counter() - t0):.1f} ms, "
                f"mask_features {tuple(out.shape)}")
            runs = []
            for i in range(args.repeats):
                t0 = time.perf_counter()
                run()
                runs.append(1e3 * (time.perf_counter() - t0))
                log(f"{block}: run {i + 1}/{args.repeats} {runs[-1]:.1f} ms")
            print(json.dumps({"block": block, "threads": args.threads, "height": args.height,
                              "width": args.width, "median_ms": round(statistics.median(runs), 3),
                              "runs_ms": [round(r, 3) for r in runs]}), flush=True)


if __name__ == "__main__":
    main()
