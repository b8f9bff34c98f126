#!/usr/bin/env python3
"""PyTorch reference side of benches/train_step.rs: time and peak memory of ONE training step
(losses + backward, CLIP frozen) of the full-size CLIP-VIS with random weights (CPU, float32).

Pinned reference environment: the shared /opt/refenv of benches/video_torch.py (CPU only, nothing
is downloaded): python 3.11.7, torch 2.5.1 (PyPI default wheel, 2.5.1+cu124, run on CPU),
open_clip_torch 2.24.0, timm 0.9.10, transformers 4.46.3, scipy 1.14.1, numpy 1.26.4,
pycocotools 2.0.11. Run from the repository root, one preset per process (peak RSS is per process):

    /opt/refenv/bin/python benches/train_step_torch.py --preset rn50 --side 512 --threads 2 --repeats 1
    /opt/refenv/bin/python benches/train_step_torch.py --preset convnext --side 512 --threads 2

Model (imported, not copied): benches/video_torch.Pipeline builds CLIP (clip_towers_torch.get_model,
open_clip RN50 / convnext_base_w_320, random init), the pixel decoder (pixel_decoder_torch, full
size, transformers' pure-PyTorch MSDeformAttn core, differentiable) and the transformer decoder
(transformer_decoder_torch, 100 queries, --layers 6 = DEC_LAYERS 7, so 7 supervised outputs).
As in scripts/fixtures/gen_train_step.py, every pixel-decoder and predictor tensor is a leaf with
requires_grad=True (sharing the built weights' storage) and the decoder runs through
torch.func.functional_call; CLIP's parameters get requires_grad=False and its res2..res5
(gen_clip.rn_features / cn_features) are computed under torch.no_grad, entering as constants.

Data (as the Rust bench): a batch of 2 random N(0, 1) [3, S, S] images; per image the same 3 binary
rectangle targets (rows x cols [S/8, S/2) x [S/8, S/2), [S/3, S-4) x [S/2, S-8), [0, S/4) x [0, S)).

Step (criterion of gen_train_step / gen_criterion, with the point counts of CLIP-VIS,
TRAIN_NUM_POINTS 12544, oversample 3, importance 0.75): per output (last first, then aux
outputs) a HungarianMatcher on 12544 uniform points per image (scipy linear_sum_assignment),
37632 uniform candidates per matched pair, the 9408 most uncertain + 3136 uniform extra points,
loss_object_ce, loss_mask, loss_dice, loss_iou (num_masks 6); total = sum 2*ce + 5*mask + 5*dice +
2*iou; total.backward(). The uniform draws (torch.rand, fresh per step) are inside the step.

Timed (wall clock): one warm-up step, then the median of --repeats steps. `step_ms` is the whole
step as benches/train_step.rs times it in its "CLIP outside the graph" mode (frozen CLIP forward
+ pixel decoder + transformer decoder + criterion + backward); `stages_ms` splits it (clip,
forward, criterion, backward) and `head_step_ms` is step_ms without the CLIP forward.
Memory: ru_maxrss (KiB, Linux; the VmHWM the Rust bench reads) after building the model
(`loaded_rss_kib`) and after the steps (`peak_rss_kib`).

Output: one JSON line on stdout, {"preset", "side", "threads", "step_ms", "peak_rss_kib",
"loaded_rss_kib", ...}; progress goes to stderr.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections import OrderedDict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "scripts", "fixtures"))

import torch  # noqa: E402
from torch.func import functional_call  # noqa: E402

import video_torch as vt  # noqa: E402  (full-size CLIP + pixel decoder + transformer decoder)
import gen_criterion as gcr  # noqa: E402
import gen_train_step as gts  # noqa: E402  (differentiable criterion of the small-model step)

gc, gpd = vt.gc, vt.pdb.gpd
NUM_POINTS = 12544                       # MODEL.MASK_FORMER.TRAIN_NUM_POINTS
STAGES = ("clip", "forward", "criterion", "backward")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def set_points(p):
    """The criterion modules read these globals at call time."""
    gcr.NUM_POINTS = gts.NUM_POINTS = p
    gcr.NUM_SAMPLED = int(p * gcr.OVERSAMPLE)
    gcr.NUM_UNCERTAIN = int(gcr.IMPORTANCE * p)
    gcr.NUM_RANDOM = p - gcr.NUM_UNCERTAIN


def targets_for(side):
    def rect(r0, r1, c0, c1):
        m = torch.zeros(side, side)
        m[r0:r1, c0:c1] = 1.0
        return m
    s = side
    one = torch.stack([rect(s // 8, s // 2, s // 8, s // 2), rect(s // 3, s - 4, s // 2, s - 8),
                       rect(0, s // 4, 0, s)])
    return [one.clone(), one.clone()]


def leaves(params):
    """Trainable leaf tensors sharing the built weights' storage (gen_train_step.leaves, no copy)."""
    return OrderedDict((k, v.detach().requires_grad_(True)) for k, v in params.items())


def step(pipe, pd_p, td_p, pixels, targets, gen):
    now, t = time.perf_counter, {}
    t0 = now()
    with torch.no_grad():
        f = (gc.rn_features if pipe.rn else gc.cn_features)(pipe.visual, pixels)
        feats = OrderedDict((k, f[k].detach()) for k in vt.FEATURES)
    t1 = now()
    pdo = gpd.pixel_decoder_forward(pd_p, feats, core="hf")
    memory = [pdo[f"multi_scale_{i}"] for i in range(3)]
    preds, _ = functional_call(pipe.decoder, dict(td_p), (memory, pdo["mask_features"], OrderedDict()))
    order = [len(preds) - 1] + list(range(len(preds) - 1))           # last, then aux_outputs
    outs = [dict(pred_masks=preds[i]["masks"], obj_logits=preds[i]["object_logits"],
                 pred_ious=preds[i]["ious"].squeeze(-1)) for i in order]
    t2 = now()
    num_masks = float(max(sum(len(x) for x in targets), 1))
    n_matched = sum(min(pipe.a.queries, len(x)) for x in targets)
    results = []
    for out in outs:                      # upstream's draw order: matcher points, then the rest
        draw = dict(match_points=[torch.rand(NUM_POINTS, 2, generator=gen) for _ in targets])
        draw["cand"] = torch.rand(n_matched, gcr.NUM_SAMPLED, 2, generator=gen)
        draw["extra"] = torch.rand(n_matched, gcr.NUM_RANDOM, 2, generator=gen)
        results.append(gts.output_losses(out, targets, draw, num_masks))
    total = gts.total_loss(results)
    t3 = now()
    total.backward()
    t4 = now()
    n_grads = sum(v.grad is not None for v in list(pd_p.values()) + list(td_p.values()))
    for v in list(pd_p.values()) + list(td_p.values()):
        v.grad = None
    t.update(clip=t1 - t0, forward=t2 - t1, criterion=t3 - t2, backward=t4 - t3)
    return {k: 1e3 * v for k, v in t.items()}, total.item(), len(outs), n_grads


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=["rn50", "convnext"], required=True)
    ap.add_argument("--side", type=int, default=512, help="square input side (multiple of 32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="timed steps after one warm-up")
    ap.add_argument("--layers", type=int, default=6, help="decoder layers (DEC_LAYERS - 1)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--points", type=int, default=NUM_POINTS, help="TRAIN_NUM_POINTS")
    a = ap.parse_args()
    if a.side % 32 or a.side < 64:
        ap.error("--side must be a multiple of 32, at least 64")
    if min(a.threads, a.repeats, a.layers, a.queries, a.points) < 1:
        ap.error("counts must be >= 1")
    globals()["NUM_POINTS"] = a.points
    set_points(a.points)

    torch.use_deterministic_algorithms(False)  # the imported fixture modules switch it on
    torch.set_num_threads(a.threads)
    log(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {a.preset} {a.side}x{a.side}, "
        f"{a.points} points, {a.layers} layers, {a.queries} queries")
    ns = argparse.Namespace(preset=a.preset, height=a.side, width=a.side, queries=a.queries,
                            layers=a.layers, classes=1, memory=1)
    pipe = vt.Pipeline(ns)
    pipe.clip.requires_grad_(False)
    pd_p = leaves(pipe.pd_params)
    td_p = leaves(pipe.decoder.state_dict())
    targets = targets_for(a.side)
    loaded = rss_kib()
    log(f"model built: ru_maxrss {loaded / 1024:.0f} MiB")

    gen = torch.Generator().manual_seed(1)
    runs = []
    for i in range(1 + a.repeats):
        pixels = torch.randn(2, 3, a.side, a.side, generator=gen)
        t, total, n_out, n_grads = step(pipe, pd_p, td_p, pixels, targets, torch.Generator().manual_seed(i))
        what = "warm-up" if i == 0 else f"step {i}/{a.repeats}"
        log(f"{a.preset} {what}: " + ", ".join(f"{s} {t[s]:.0f}" for s in STAGES)
            + f" ms (sum {sum(t.values()):.0f}); total loss {total:.4f} over {n_out} outputs, "
            f"{n_grads}/{len(pd_p) + len(td_p)} tensors with grad; ru_maxrss {rss_kib() / 1024:.0f} MiB")
        if i > 0:
            runs.append(t)
    stages = {s: round(statistics.median(r[s] for r in runs), 1) for s in STAGES}
    step_ms = statistics.median(sum(r.values()) for r in runs)
    head_ms = statistics.median(sum(v for k, v in r.items() if k != "clip") for r in runs)
    print(json.dumps({"preset": a.preset, "side": a.side, "threads": a.threads,
                      "step_ms": round(step_ms, 1), "peak_rss_kib": rss_kib(), "loaded_rss_kib": loaded,
                      "head_step_ms": round(head_ms, 1), "stages_ms": stages, "repeats": a.repeats,
                      "points": a.points, "layers": a.layers, "queries": a.queries,
                      "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
