#!/usr/bin/env python3
"""How far two YouTube-VIS results files (`results.json` of `clip-vis segment` / `demo`) are
apart: detections paired within each (video, category) by the highest video mask IoU (intersection over
union summed over the frames), greedily; their score differences; and the IoU of each pair.

Used to measure `--dtype bf16` against the default f32 (README, "CPU speed"):

    python3 scripts/compare_results.py f32/results.json bf16/results.json

Needs numpy and pycocotools (pip install numpy pycocotools); not used by CI.
"""
import json
import sys
from collections import defaultdict

import numpy as np
from pycocotools import mask as mask_utils


def load(path):
    with open(path) as f:
        results = json.load(f)
    groups = defaultdict(list)
    for r in results:
        groups[(r["video_id"], r["category_id"])].append(r)
    for key in groups:
        groups[key].sort(key=lambda r: -r["score"])
    return results, groups


def decode(rle):
    if rle is None:
        return None
    if isinstance(rle["counts"], str):
        rle = dict(rle, counts=rle["counts"].encode())
    return mask_utils.decode(rle).astype(bool)


def video_iou(a, b):
    inter = union = 0
    for x, y in zip(a["segmentations"], b["segmentations"]):
        x, y = decode(x), decode(y)
        if x is None and y is None:
            continue
        if x is None:
            x = np.zeros_like(y)
        if y is None:
            y = np.zeros_like(x)
        inter += int((x & y).sum())
        union += int((x | y).sum())
    return 1.0 if union == 0 else inter / union


def main(first, second):
    a_all, a = load(first)
    b_all, b = load(second)
    print(f"detections: {len(a_all)} vs {len(b_all)}")
    only = set(a) ^ set(b)
    print(f"(video, category) groups: {len(a)} vs {len(b)}, {len(only)} in one file only")
    score_diffs, ious, identical = [], [], 0
    for key in sorted(set(a) & set(b)):
        pairs = sorted(
            ((video_iou(x, y), i, j) for i, x in enumerate(a[key]) for j, y in enumerate(b[key])),
            reverse=True,
        )
        used_a, used_b = set(), set()
        for iou, i, j in pairs:
            if i in used_a or j in used_b:
                continue
            used_a.add(i)
            used_b.add(j)
            x, y = a[key][i], b[key][j]
            score_diffs.append(abs(x["score"] - y["score"]))
            identical += x["segmentations"] == y["segmentations"]
            ious.append(iou)
    if not ious:
        print("no detections in common")
        return
    ious = np.array(ious)
    diffs = np.array(score_diffs)
    print(f"paired detections: {len(ious)}, identical RLEs: {identical}")
    print(f"|score difference|: max {diffs.max():.2e}, mean {diffs.mean():.2e}")
    print(
        f"video mask IoU: min {ious.min():.4f}, mean {ious.mean():.4f}, "
        f"pairs below 0.9: {(ious < 0.9).sum()}"
    )


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
