#!/usr/bin/env python3
"""PyTorch (open_clip) side of the clip-vis CLIP tower benchmark.

Pinned reference environment (CPU only; only PyPI is needed; same as scripts/fixtures/gen_clip.py):

    python3 -m venv /opt/refenv
    /opt/refenv/bin/pip install "torch==2.5.1" "open_clip_torch==2.24.0" "timm==0.9.10" \
        "ftfy==6.3.1" "regex" "safetensors" "numpy<2"

    measured with python 3.11.7, torch 2.5.1 (PyPI default wheel, 2.5.1+cu124, run on CPU),
    open_clip_torch 2.24.0, timm 0.9.10, ftfy 6.3.1, numpy 1.26.4

Run from the repository root (nothing is downloaded; models have random weights):

    /opt/refenv/bin/python benches/clip_towers_torch.py --threads 2 --repeats 5
    /opt/refenv/bin/python benches/clip_towers_torch.py --threads 2 --repeats 5 --blocks rn50_trunk,rn50_text

Blocks (float32, eval mode, torch.no_grad, torch.set_num_threads(threads)):
    rn50_trunk      open_clip RN50 (force_quick_gelu=True) image trunk up to res5 on one random
                    [1,3,640,640] input: conv1..conv3 stem, avgpool, layer1..layer4 (no attnpool)
    convnext_trunk  open_clip convnext_base_w_320 visual.trunk.stem + the 4 stages (no head)
    rn50_text       RN50 encode_text on the 80 COCO prompts "a photo of a {name}."
    convnext_text   convnext_base_w_320 encode_text on the same prompts
Prompts are tokenized once, outside the timed region, with open_clip.tokenize (context 77,
full length, as open_clip does). Each block: one warm-up run, then `repeats` timed runs.

Output: one JSON object per line on stdout,
    {"block": "rn50_trunk", "threads": 2, "median_ms": ..., "runs_ms": [...]}
and nothing else; progress goes to stderr.
"""

import argparse
import json
import statistics
import sys
import time

import torch

import open_clip
from open_clip.version import __version__ as OPEN_CLIP_VERSION

BLOCKS = ["rn50_trunk", "convnext_trunk", "rn50_text", "convnext_text"]

IMAGE_SIZE = 640
PROMPT = "a photo of a {}."

COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
assert len(COCO_CLASSES) == 80


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def rn50_trunk(visual, x):
    x = visual.act1(visual.bn1(visual.conv1(x)))
    x = visual.act2(visual.bn2(visual.conv2(x)))
    x = visual.act3(visual.bn3(visual.conv3(x)))
    x = visual.avgpool(x)
    x = visual.layer1(x)
    x = visual.layer2(x)
    x = visual.layer3(x)
    x = visual.layer4(x)
    return x  # res5


def convnext_trunk(visual, x):
    t = visual.trunk
    x = t.stem(x)
    for stage in t.stages:
        x = stage(x)
    return x  # res5


_models = {}


def get_model(name):
    if name not in _models:
        log(f"building {name} (random weights)")
        torch.manual_seed(0)
        if name == "rn50":
            m = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True)
        else:
            m = open_clip.create_model("convnext_base_w_320", pretrained=None)
        _models[name] = m.float().eval()
    return _models[name]


def make_block(block):
    """Returns a zero-argument callable running one forward pass of `block`."""
    model = get_model("rn50" if block.startswith("rn50") else "convnext")
    if block.endswith("_trunk"):
        x = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
        fn = rn50_trunk if block == "rn50_trunk" else convnext_trunk
        return lambda: fn(model.visual, x)
    tokens = open_clip.tokenize([PROMPT.format(c) for c in COCO_CLASSES])  # [80, 77] int64
    return lambda: model.encode_text(tokens)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--blocks", default=",".join(BLOCKS), help="comma-separated subset of " + ",".join(BLOCKS))
    args = ap.parse_args()
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    for b in blocks:
        if b not in BLOCKS:
            ap.error(f"unknown block {b!r}; expected one of {BLOCKS}")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__}, open_clip {OPEN_CLIP_VERSION}, threads {torch.get_num_threads()}")

    with torch.no_grad():
        for block in blocks:
            run = make_block(block)
            t0 = time.perf_counter()
            out = run()
            log(f"{block}: warm-up {1e3 * (time.perf_counter() - t0):.1f} ms, output {tuple(out.shape)}")
            runs = []
            for i in range(args.repeats):
                t0 = time.perf_counter()
                run()
                runs.append(1e3 * (time.perf_counter() - t0))
                log(f"{block}: run {i + 1}/{args.repeats} {runs[-1]:.1f} ms")
            print(json.dumps({"block": block, "threads": args.threads,
                              "median_ms": round(statistics.median(runs), 3),
                              "runs_ms": [round(r, 3) for r in runs]}), flush=True)


if __name__ == "__main__":
    main()
