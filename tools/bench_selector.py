"""Benchmark the greedy channel selector.

1. Gram-form greedy vs the naive lstsq greedy (onnx_subprune.select.reference, with the
   faster "gelsy" LAPACK driver so the speed-up is not inflated) on random conv-shaped problems
   (block = 9, N = d + 64, k = n / 2), n = 32, 64, 128 by default. The naive cost grows like
   n^5 (n = 128 takes many minutes), so it runs in a child process stopped after
   --naive-timeout seconds; a stopped run is reported as a lower bound. The child uses one
   OpenBLAS thread: its many small solves are fastest that way (threads thrash on a busy machine).
   The greedy runs in this process with the BLAS threads as configured.
2. Greedy + refit on a 512-channel 3x3 consumer (d = 4608, m = 512, k = 256) whose statistics are
   the exact population moments of x = F z + mu + noise (F of rank 1024), so no big B is formed.

Usage: python tools/bench_selector.py [--json OUT.json] [--naive-sizes 32 64 128]
                                      [--naive-timeout 600] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time

import numpy as np

from onnx_subprune.select import ConsumerStats, greedy_select, refit
from onnx_subprune.select.reference import naive_greedy

BLOCK = 9


def conv_problem(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random (B (N, d), Y (N, m), W (d, m)) with correlated columns, N = d + 64, m = 8."""
    d, m = n * BLOCK, 8
    rows = d + 64
    mix = np.eye(d) + 0.2 * rng.standard_normal((d, d)) / np.sqrt(d)
    b = rng.standard_normal((rows, d)) @ mix + rng.standard_normal(d)
    w = rng.standard_normal((d, m))
    y = b @ w + 0.5 * rng.standard_normal((rows, m))
    return b, y, w


def timed(fn):
    """(result, seconds) of ``fn()``."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _naive_job(b: np.ndarray, y: np.ndarray, k: int):
    """(order, gains, seconds) of the naive greedy (run in a child process)."""
    (order, gains), seconds = timed(lambda: naive_greedy([(b, y)], BLOCK, k, driver="gelsy"))
    return order, gains, seconds


def bench_naive(n: int, rng: np.random.Generator, timeout: float) -> dict:
    """Times of the Gram greedy (from precomputed stats) and the naive greedy on one problem.

    A naive run longer than ``timeout`` seconds is stopped: naive_s is then that lower bound.
    """
    b, y, w = conv_problem(n, rng)
    stats = ConsumerStats.from_gram(
        b.T @ b, b.T @ y, y_sq=float(np.sum(y * y)), b_sum=b.sum(0), y_sum=y.sum(0),
        n_rows=b.shape[0], weight=w, block=BLOCK,
    )
    k = n // 2
    fast, t_fast = timed(lambda: greedy_select([stats], k))
    row = {"n": n, "d": n * BLOCK, "N": b.shape[0], "k": k, "greedy_s": t_fast}
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # read by the spawned child only
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        job = pool.apply_async(_naive_job, (b, y, k))
        try:
            order, gains, t_naive = job.get(timeout)
        except multiprocessing.TimeoutError:
            return {**row, "naive_s": timeout, "naive_stopped": True,
                    "speedup": timeout / t_fast, "same_order": None, "total_rel_diff": None}
    return {
        **row, "naive_s": t_naive, "naive_stopped": False, "speedup": t_naive / t_fast,
        "same_order": bool(np.array_equal(fast.order, order)),
        "total_rel_diff": abs(fast.total - gains.sum()) / gains.sum(),
    }


def synthetic_stats(n: int, m: int, rank: int, n_rows: int, rng: np.random.Generator):
    """Population statistics of x = F z + mu + 0.1 eps (d = 9 n), y = W^T x + 0.3 eta."""
    d = n * BLOCK
    f = rng.standard_normal((d, rank)) / np.sqrt(rank)
    mu = 0.5 * np.abs(rng.standard_normal(d))
    w = rng.standard_normal((d, m)) / np.sqrt(d)
    gram = f @ f.T
    gram += np.outer(mu, mu)
    gram[np.diag_indices(d)] += 0.01
    gram *= n_rows
    cross = gram @ w
    return ConsumerStats.from_gram(
        gram, cross, y_sq=float(np.sum(w * cross)) + 0.09 * n_rows * m,
        b_sum=n_rows * mu, y_sum=n_rows * (w.T @ mu), n_rows=n_rows, weight=w, block=BLOCK,
    )


def bench_large(rng: np.random.Generator) -> dict:
    """Time of greedy (k = 256) and refit on a 512-channel 3x3 consumer; the greedy also with one
    BLAS thread (as the pipeline runs it, choose.SELECT_THREADS) against all of them."""
    from threadpoolctl import threadpool_limits

    stats, t_build = timed(lambda: synthetic_stats(512, 512, 1024, 100_000, rng))
    with threadpool_limits(1, user_api="blas"):
        _, t_single = timed(lambda: greedy_select([stats], 256))
    result, t_select = timed(lambda: greedy_select([stats], 256))
    kept = np.sort(result.order)
    _, t_refit = timed(lambda: refit(stats, kept))
    return {
        "n": 512, "d": stats.d, "m": stats.m, "k": 256, "build_stats_s": t_build,
        "greedy_s": t_select, "greedy_one_thread_s": t_single, "refit_s": t_refit, "greedy_plus_refit_s": t_select + t_refit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--naive-sizes", type=int, nargs="*", default=[32, 64, 128])
    parser.add_argument("--naive-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    results = {"naive_vs_gram": [], "large": None}
    header = [("n", 5), ("d", 6), ("N", 6), ("k", 4), ("greedy s", 9), ("naive s", 10)]
    header.append(("speedup", 9))
    print(" ".join(f"{name:>{width}}" for name, width in header), "same")
    for n in args.naive_sizes:
        row = bench_naive(n, rng, args.naive_timeout)
        results["naive_vs_gram"].append(row)
        bound = ">" if row["naive_stopped"] else " "
        print(f"{row['n']:5d} {row['d']:6d} {row['N']:6d} {row['k']:4d} {row['greedy_s']:9.3f} "
              f"{bound}{row['naive_s']:9.2f} {bound}{row['speedup']:8.0f} {row['same_order']}")
    large = bench_large(rng)
    results["large"] = large
    print(f"512 ch x 3x3 (d={large['d']}, m={large['m']}), k=256: greedy {large['greedy_s']:.2f} s"
          f" + refit {large['refit_s']:.2f} s = {large['greedy_plus_refit_s']:.2f} s"
          f" (building the stats: {large['build_stats_s']:.2f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
