"""Reference side of benches/matching.rs: CLIP-VIS's temporal top-K matching as the official
`post_processing` / `match_from_vote_embds` run it (torch float32 costs, SciPy Hungarian).

usage: matching_python.py <f32 file> FRAMES QUERIES DIM T K --threads N   (prints one json line)
"""
import argparse
import json
import time
from collections import deque

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def vote(memory, cur, k):
    cur = cur / cur.norm(dim=1)[:, None]
    scores, perms, costs = [], [], []
    for i, tgt in enumerate(memory):
        tgt = tgt / tgt.norm(dim=1)[:, None]
        c = 1 - torch.mm(cur, tgt.t())
        scores.append(c * (i + 1))
        rows, cols = linear_sum_assignment(c.t())
        perms.append(cols)
        costs.append(c[cols, rows].sum())
    costs = torch.stack(costs)
    if len(costs) < k:
        return perms[int(torch.topk(costs, 1, largest=False)[1])]
    best = torch.topk(costs, k, largest=False)[1]
    return linear_sum_assignment(torch.stack(scores)[best].mean(0).t())[1]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("path")
    for name in ("frames", "queries", "dim", "t", "k"):
        p.add_argument(name, type=int)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = torch.from_numpy(np.fromfile(a.path, dtype="<f4").reshape(a.frames, a.queries, a.dim))
    memory = deque(maxlen=a.t)
    start = time.perf_counter()
    memory.append(data[0])
    for f in range(1, a.frames):
        perm = vote(memory, data[f], a.k)
        memory.append(data[f][perm])
    elapsed = time.perf_counter() - start
    print(json.dumps({"ms_per_frame": elapsed * 1e3 / a.frames}))


if __name__ == "__main__":
    main()
