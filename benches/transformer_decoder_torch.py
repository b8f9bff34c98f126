#!/usr/bin/env python3
"""PyTorch side of the clip-vis transformer-decoder benchmark (masked-attention decoder, CPU).

Pinned reference environment (CPU only; only PyPI is needed; same venv as
scripts/fixtures/gen_transformer_decoder.py):

    python3 -m venv /opt/refenv
    /opt/refenv/bin/pip install "torch==2.5.1" "safetensors" "numpy<2"

    measured with python 3.11.7, torch 2.5.1 (PyPI default wheel, 2.5.1+cu124, run on CPU),
    safetensors 0.8.0, numpy 1.26.4

Run from the repository root (nothing is downloaded; weights and inputs are random):

    /opt/refenv/bin/python benches/transformer_decoder_torch.py --threads 2 --repeats 3 --height 480 --width 640 --layers 6
    /opt/refenv/bin/python benches/transformer_decoder_torch.py --threads 2 --repeats 3 --layers 9

(benches/transformer_decoder.rs calls it with the first form.)

What is timed: the forward of the `Decoder` module of scripts/fixtures/gen_transformer_decoder.py
(imported, not copied), i.e. CLIP-VIS's MultiScaleMaskedTransformerDecoder (post-norm, no dropout,
in_channels == hidden_dim so no input_proj; torch.nn.MultiheadAttention / LayerNorm / Linear),
resized to the full CLIP-VIS configuration by overriding that module's `TD` dict:
    hidden 256, 8 heads, FFN 2048, 100 queries, mask_dim 256, 3 memory levels,
    --layers transformer layers (6 = the LVIS models, DEC_LAYERS 7; 9 = DEC_LAYERS 10).
One forward computes the sine position embeddings and level embeddings of the 3 memory levels,
the prediction heads before the first layer and after every layer (decoder_norm, object_embed,
mask_embed + einsum with mask_features, iou_head + sigmoid, bilinear resize of the mask logits to
the next level and the `sigmoid < 0.5` attention mask, repeated over the heads, with fully-masked
rows reopened), and per layer the masked cross-attention, self-attention and FFN, plus the final
decoder_norm (pred_embds). The fixture module also keeps a few small clones of the attention
masks and references to the intermediate query states for its checks; they are kept here (a
negligible cost next to the [100 x 256] x [256 x 120*160] mask einsums).

Inputs: batch 1, random N(0, 1)-scale features from the fixture generator's `make_inputs`
(memory maps of 256 channels at 1/32, 1/16, 1/8 of --height x --width, sized H//s x W//s,
480x640 -> 15x20, 30x40, 60x80; mask_features [1, 256, H/4, W/4] = 120x160, fine noise plus a
smooth part and a per-channel offset so the attention masks are blob-like rather than random).
Weights: the fixture generator's random init (`make_params`), float32, seeded, loaded with
strict=True. Everything runs in float32 eval mode under torch.no_grad() with
torch.set_num_threads(threads) (and deterministic algorithms off, which the imported module
switches on). One warm-up run, then `repeats` timed runs; the median is reported.

Output: one JSON object on stdout,
    {"block": "transformer_decoder_6", "threads": 2, "height": 480, "width": 640,
     "median_ms": ..., "runs_ms": [...]}
and nothing else; progress goes to stderr.
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "fixtures"))
import gen_transformer_decoder as gtd  # noqa: E402  (sets 1 thread + deterministic algorithms on import)

FULL = dict(hidden=256, heads=8, ffn=2048, queries=100, mask_dim=256, levels=3, batch=1,
            level_strides=(32, 16, 8), mask_stride=4)
SEED = 20240703


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_model(layers, height, width, gen):
    """Configures the reference module for `layers` layers and a height x width frame; returns the
    decoder (random params drawn from `gen`, float32, eval) and its params."""
    gtd.TD.update(FULL)
    gtd.TD["dec_layers_cfg"] = layers + 1  # from_config: dec_layers = DEC_LAYERS - 1
    gtd.TD["layers"] = layers
    gtd.TD["image_hw"] = (height, width)
    params = gtd.make_params(gen)
    model = gtd.Decoder().float().eval()
    if sorted(model.state_dict().keys()) != sorted(gtd.official_key_names()):
        raise SystemExit("decoder key set differs from the official predictor key set")
    model.load_state_dict(params, strict=True)
    return model, params


def make_block(layers, height, width):
    """Returns a zero-argument callable running one decoder forward (see build_model)."""
    gen = torch.Generator().manual_seed(SEED)
    model, params = build_model(layers, height, width, gen)
    inputs = gtd.make_inputs(gen)
    feats = [inputs[f"multi_scale_{l}"] for l in range(gtd.TD["levels"])]
    mask_features = inputs["mask_features"]
    n_params = sum(v.numel() for v in params.values())
    log(f"transformer_decoder_{layers}: {n_params / 1e6:.2f} M params, inputs "
        + ", ".join(f"level{l} {tuple(f.shape[1:])}" for l, f in enumerate(feats))
        + f", mask_features {tuple(mask_features.shape[1:])}")

    def run():
        preds, embds = model(feats, mask_features, OrderedDict())
        return preds[-1]["masks"], embds

    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--layers", type=int, default=6,
                    help="transformer layers (DEC_LAYERS - 1): 6 for the LVIS models, or 9")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.layers < 1:
        ap.error("--layers must be >= 1")
    if args.height < 32 or args.width < 32:
        ap.error("--height and --width must be >= 32")

    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"input {args.height}x{args.width}, layers {args.layers}")

    block = f"transformer_decoder_{args.layers}"
    with torch.no_grad():
        run = make_block(args.layers, args.height, args.width)
        t0 = time.perf_counter()
        masks, embds = run()
        log(f"{block}: warm-up {1e3 * (time.perf_counter() - t0):.1f} ms, "
            f"masks {tuple(masks.shape)}, pred_embds {tuple(embds.shape)}")
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
