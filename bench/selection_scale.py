"""Fleet-scale selection: pick k frames out of N stored embeddings with the product's composed
selection (segxal.selection.select, the coordinator's and the fleet's one path), and how time and
peak memory grow with N.

Each size runs in a fresh process (peak RSS is the process's own high-water mark, so sizes do not
hide each other), on synthetic unit embeddings in drive-log clusters, random scores and Dirichlet
class histograms. Prints one row per N and the growth ratios against the smallest N.

    python bench/selection_scale.py                       # 1,000 of 100k, 300k and 1M, D 256, 5k labelled
    python bench/selection_scale.py --sizes 10000 --k 100 # quick
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def _one(n: int, k: int, d: int, labelled: int, spec_text: str, classes: int, seed: int) -> dict:
    from segxal.selection import PoolFeatures, SelectionSpec, select
    rng = np.random.default_rng(seed)
    logs = max(1, n // 50)  # ~50 frames per drive log
    log_of = rng.integers(0, logs, n)
    centres = rng.standard_normal((logs, d)).astype(np.float32)
    emb = centres[log_of]
    emb += 0.3 * rng.standard_normal((n, d), dtype=np.float32)  # in place: no second N x D copy
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lab = rng.standard_normal((labelled, d)).astype(np.float32)
    lab /= np.linalg.norm(lab, axis=1, keepdims=True)
    hist = rng.dirichlet(np.full(classes, 0.3), n).astype(np.float32)
    pool = PoolFeatures(ids=np.arange(n).astype(str), scores=rng.random(n), embeddings=emb, class_hist=hist,
                        log_ids=log_of.astype(str))
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    picks = select(pool, k, SelectionSpec.parse(spec_text), labelled_embeddings=lab,
                   labelled_class_hist=hist[:labelled].sum(0))
    dt = time.perf_counter() - t0
    return {"n": n, "k": k, "d": d, "labelled": labelled, "picked": len(picks), "seconds": dt,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "data_rss_mb": rss_data,
            "distinct_logs": len({p.log_id for p in picks})}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000], help="pool sizes N")
    p.add_argument("--k", type=int, default=1000, help="frames to pick")
    p.add_argument("--dim", type=int, default=256, help="embedding size D (the default U-Net's bottleneck)")
    p.add_argument("--labelled", type=int, default=5000, help="frames already labelled (diversity counts them)")
    p.add_argument("--selection", default="score=1,diversity=1,balance=1,log_cap=20", help="the composed selection")
    p.add_argument("--classes", type=int, default=19, help="classes of the class histograms")
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_one(a.child, a.k, a.dim, a.labelled, a.selection, a.classes, a.seed)))
        return 0
    rows = []
    print(f"selection '{a.selection}', k={a.k}, D={a.dim}, {a.labelled} labelled; one fresh process per N")
    print(f"{'N':>10} {'picked':>6} {'logs':>5} {'select s':>9} {'peak RSS MB':>12} {'of it data MB':>14}")
    for n in a.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--k", str(a.k), "--dim", str(a.dim),
                              "--labelled", str(a.labelled), "--selection", a.selection, "--classes", str(a.classes),
                              "--seed", str(a.seed)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{r['n']:>10} {r['picked']:>6} {r['distinct_logs']:>5} {r['seconds']:>9.2f} {r['peak_rss_mb']:>12.0f} "
              f"{r['data_rss_mb']:>14.0f}", flush=True)
    base = rows[0]
    for r in rows[1:]:
        print(f"N x{r['n'] / base['n']:.0f}: time x{r['seconds'] / base['seconds']:.2f}, "
              f"peak RSS x{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
