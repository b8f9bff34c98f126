"""PyTorch-side (Python) timing for `benches/eval.rs`: the upstream LV-VIS evaluator on the same
files, timed end to end (load ground truth, load results, evaluate, accumulate, summarize).

Run by the Rust bench; by hand:
    /opt/refenv/bin/python benches/eval_python.py --evalref /tmp/evalref --gt gt.json --results results.json
`--evalref` holds the upstream evaluator files extracted from the CLIP-VIS repository (see
`scripts/fixtures/gen_eval.py`, whose loader this reuses). Prints one JSON line:
{"seconds": ..., "AP": ...}. Versions: numpy 1.26.4, pycocotools 2.0.11.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "fixtures"))
import gen_eval  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--evalref", required=True)
    parser.add_argument("--gt", required=True)
    parser.add_argument("--results", required=True)
    args = parser.parse_args()
    mods = gen_eval.load_upstream(args.evalref)
    start = time.time()
    upstream, _, _ = gen_eval.run_lvvis(mods, args.gt, args.results)
    seconds = time.time() - start
    ap = upstream["all"][0] if isinstance(upstream, dict) and "all" in upstream else float("nan")
    print(json.dumps({"seconds": seconds, "AP": ap}))


if __name__ == "__main__":
    main()
