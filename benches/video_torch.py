#!/usr/bin/env python3
"""PyTorch reference side of benches/video.rs: per-frame time of each stage of the CLIP-VIS video
pipeline (CPU, float32, random weights at full size).

Pinned reference environment (CPU only; only PyPI is needed; the union of the venvs of
benches/clip_towers_torch.py, pixel_decoder_torch.py, transformer_decoder_torch.py and
scripts/fixtures/gen_video.py):

    python3 -m venv /opt/refenv
    /opt/refenv/bin/pip install "torch==2.5.1" "open_clip_torch==2.24.0" "timm==0.9.10" \
        "ftfy==6.3.1" "regex" "safetensors" "numpy<2" "torchvision==0.20.1" "pillow==13.0.0" \
        "transformers==4.46.3" "scipy==1.14.1" "pycocotools"

    measured with python 3.11.7, torch 2.5.1 (PyPI default wheel, 2.5.1+cu124, run on CPU),
    open_clip_torch 2.24.0, timm 0.9.10, transformers 4.46.3, scipy 1.14.1, numpy 1.26.4

Run from the repository root (nothing is downloaded; weights and frames are random):

    /opt/refenv/bin/python benches/video_torch.py --preset rn50 --height 480 --width 864 \
        --valid-height 480 --valid-width 853 --orig-height 720 --orig-width 1280 \
        --frames 4 --classes 1196 --threads 2 --repeats 1

The model is built once (CLIP via clip_towers_torch.get_model, pixel decoder via
pixel_decoder_torch.build_params, transformer decoder via transformer_decoder_torch.build_model;
dense paths gen_clip.rn_dense / cn_dense; matching matching_python.vote; output resize
gen_clip_vis.output_resize: all imported, not copied). A random unit text classifier [C, embed]
is made outside the timed region. Per frame (batch 1, a random N(0, 1) [1, 3, H, W] input) the
stages, each timed on its own:
    clip                 CLIP image trunk -> res2..res5 (res5 is also the dense map)
    pixel_decoder        MSDeformAttn pixel decoder (6 layers, pure-PyTorch core) + FPN, stride 4
    transformer_decoder  masked-attention decoder (--layers layers, --queries queries) with heads
    classify             bilinear mask logits -> res5 grid, > 0, dense pooling (RN50 masked
                         attention pool; ConvNeXt masked mean + head norm + proj), 100 *
                         normalize(pooled) @ classifier^T (empty masks -> 0), softmax
    matching             top-K vote (K=--topk) against a full memory of --memory frames'
                         embeddings (1 - cos, SciPy linear_sum_assignment), memory append
    masks                all queries: bilinear to H x W, crop to valid, bilinear to orig, > 0,
                         pycocotools RLE (one mask.encode on a Fortran [h, w, Q] uint8 array,
                         counts decoded to str)
One warm-up frame, then `repeats` passes over `frames` frames; the median per stage is reported.

Output: one JSON line on stdout,
    {"preset": ..., "threads": ..., "height": ..., "width": ..., "frames": ...,
     "stages_ms": {"clip": ..., ...}, "total_ms": <sum of the stage medians>, ...}
and nothing else; progress goes to stderr.
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections import OrderedDict, deque

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "scripts", "fixtures"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from pycocotools import mask as mask_util  # noqa: E402

import clip_towers_torch as ctb  # noqa: E402
import pixel_decoder_torch as pdb  # noqa: E402  (imports gen_pixel_decoder)
import transformer_decoder_torch as tdb  # noqa: E402  (imports gen_transformer_decoder)
from matching_python import vote  # noqa: E402
import gen_clip as gc  # noqa: E402
import gen_clip_vis as gcv  # noqa: E402

STAGES = ["clip", "pixel_decoder", "transformer_decoder", "classify", "matching", "masks"]
FEATURES = ("res2", "res3", "res4", "res5")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Pipeline:
    def __init__(self, a):
        self.a = a
        self.rn = a.preset == "rn50"
        self.clip = ctb.get_model("rn50" if self.rn else "convnext")
        self.visual = self.clip.visual
        gen = torch.Generator().manual_seed(20240703)
        self.pd_params = pdb.build_params("r50" if self.rn else "convnext", a.height, a.width, gen)
        tdb.FULL["queries"] = a.queries
        self.decoder, _ = tdb.build_model(a.layers, a.height, a.width, gen)
        embed = self.clip.text_projection.shape[1]
        cls = torch.randn(a.classes, embed, generator=gen)
        self.classifier = F.normalize(cls, dim=-1)  # stands in for the (one-time) text tower
        self.memory = deque((torch.randn(a.queries, 256, generator=gen) for _ in range(a.memory)),
                            maxlen=a.memory)
        n_pd = sum(v.numel() for v in self.pd_params.values())
        n_td = sum(v.numel() for v in self.decoder.parameters())
        n_clip = sum(v.numel() for v in self.visual.parameters())
        log(f"{a.preset}: CLIP visual {n_clip / 1e6:.1f} M, pixel decoder {n_pd / 1e6:.2f} M, "
            f"transformer decoder {n_td / 1e6:.2f} M params; classifier {tuple(cls.shape)}")

    def frame(self, x):
        a, t, now = self.a, {}, time.perf_counter
        t0 = now()
        f = (gc.rn_features if self.rn else gc.cn_features)(self.visual, x)
        feats = OrderedDict((k, f[k]) for k in FEATURES)
        res5 = feats["res5"]
        t1 = now()
        t["clip"] = t1 - t0
        pdo = pdb.gpd.pixel_decoder_forward(self.pd_params, feats, core="hf")
        memory = [pdo[f"multi_scale_{i}"] for i in range(3)]
        t2 = now()
        t["pixel_decoder"] = t2 - t1
        preds, embds = self.decoder(memory, pdo["mask_features"], OrderedDict())
        masks = preds[-1]["masks"]  # [1, Q, H/4, W/4]
        t3 = now()
        t["transformer_decoder"] = t3 - t2
        mfp = F.interpolate(masks, size=res5.shape[-2:], mode="bilinear", align_corners=False)
        if self.rn:
            pooled, _ = gc.rn_dense(self.visual, res5, mfp)
        else:
            pooled, _ = gc.cn_dense(self.visual, res5, mfp)
        logits = 100.0 * F.normalize(pooled, dim=-1) @ self.classifier.t()  # [1, Q, C]
        logits[~(mfp > 0).flatten(2).any(-1)] = 0.0  # empty mask (RN50: NaN) -> uniform
        probs = logits.softmax(-1)
        t4 = now()
        t["classify"] = t4 - t3
        cur = embds[0]
        perm = vote(self.memory, cur, a.topk)
        self.memory.append(cur[torch.as_tensor(perm)])
        t5 = now()
        t["matching"] = t5 - t4
        m = gcv.output_resize(masks, (a.height, a.width), (a.valid_height, a.valid_width),
                              (a.orig_height, a.orig_width))[0] > 0  # [Q, oh, ow]
        arr = m.transpose(1, 2).to(torch.uint8).contiguous().numpy()  # [Q, ow, oh]
        rles = mask_util.encode(np.asfortranarray(arr.transpose(2, 1, 0)))  # [oh, ow, Q], F order
        for r in rles:
            r["counts"] = r["counts"].decode("utf-8")
        t["masks"] = now() - t5
        assert len(rles) == a.queries and probs.shape == (1, a.queries, a.classes)
        return {k: 1e3 * v for k, v in t.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=["rn50", "convnext"], required=True)
    ap.add_argument("--height", type=int, default=480, help="padded input height (multiple of 32)")
    ap.add_argument("--width", type=int, default=864, help="padded input width (multiple of 32)")
    ap.add_argument("--valid-height", type=int, help="unpadded resized height (default --height)")
    ap.add_argument("--valid-width", type=int, help="unpadded resized width (default --width)")
    ap.add_argument("--orig-height", type=int, help="original video height (default valid)")
    ap.add_argument("--orig-width", type=int, help="original video width (default valid)")
    ap.add_argument("--frames", type=int, default=4, help="timed frames per repeat")
    ap.add_argument("--classes", type=int, default=1196)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--layers", type=int, default=6, help="decoder layers (DEC_LAYERS - 1)")
    ap.add_argument("--memory", type=int, default=9, help="matching memory length T")
    ap.add_argument("--topk", type=int, default=3, help="matching top-K")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="passes over the frames")
    a = ap.parse_args()
    a.valid_height = a.valid_height or a.height
    a.valid_width = a.valid_width or a.width
    a.orig_height = a.orig_height or a.valid_height
    a.orig_width = a.orig_width or a.valid_width
    if a.height % 32 or a.width % 32 or a.height < 64 or a.width < 64:
        ap.error("--height and --width must be multiples of 32, at least 64")
    if not (0 < a.valid_height <= a.height and 0 < a.valid_width <= a.width):
        ap.error("--valid-height/--valid-width must be within the padded size")
    if min(a.frames, a.repeats, a.threads, a.classes, a.queries, a.layers, a.memory, a.topk) < 1:
        ap.error("counts must be >= 1")

    torch.use_deterministic_algorithms(False)  # the imported fixture modules switch it on
    torch.set_num_threads(a.threads)
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, input {a.height}x{a.width} "
        f"(valid {a.valid_height}x{a.valid_width}, orig {a.orig_height}x{a.orig_width})")
    gen = torch.Generator().manual_seed(1)
    runs = {s: [] for s in STAGES}
    with torch.no_grad():
        pipe = Pipeline(a)
        for i in range(1 + a.frames * a.repeats):
            x = torch.randn(1, 3, a.height, a.width, generator=gen)
            t = pipe.frame(x)
            what = "warm-up" if i == 0 else f"frame {i}/{a.frames * a.repeats}"
            log(f"{a.preset} {what}: " + ", ".join(f"{s} {t[s]:.1f}" for s in STAGES)
                + f" ms (sum {sum(t.values()):.1f})")
            if i > 0:
                for s in STAGES:
                    runs[s].append(t[s])
    stages = {s: round(statistics.median(runs[s]), 3) for s in STAGES}
    print(json.dumps({"preset": a.preset, "threads": a.threads, "height": a.height, "width": a.width,
                      "frames": a.frames, "stages_ms": stages,
                      "total_ms": round(sum(stages.values()), 3), "repeats": a.repeats,
                      "valid": [a.valid_height, a.valid_width], "orig": [a.orig_height, a.orig_width],
                      "classes": a.classes, "queries": a.queries, "layers": a.layers,
                      "memory": a.memory, "topk": a.topk}), flush=True)


if __name__ == "__main__":
    main()
