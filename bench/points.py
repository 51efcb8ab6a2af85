"""Chamfer distance throughput for the PointFlow evaluation matrix, and shapes/s generated.

Compares, on the same clouds (1,024 points, shape_bbox-normalised; ModelNet10 chairs when
the shared data is there, else synthetic shapes):
  kdtree  domains.points.metrics.chamfer_matrix (scipy cKDTree per cloud, the default)
  torch   domains.points.metrics.chamfer_matrix_torch (chunked brute force)
  naive   a loop of torch.cdist over every pair (the baseline)
the training loss's Chamfer distance forward + backward on a tokenizer batch (16 decoded
sets of 256 points against 16 input clouds of 1,024): `chamfer_distance` (matched pairs)
against min over `torch.cdist` (the baseline), alternating rounds; and, with --model, the
shapes per second `CrossScaleAR.generate` + decode produces.
Prints one JSON object as its last line.

  python bench/points.py --shapes 48 --threads 1
  python bench/points.py --model runs/p/ar/checkpoints/last.ckpt --generate 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch


def naive_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.empty(len(a), len(b))
    for i in range(len(a)):
        for j in range(len(b)):
            d = torch.cdist(a[i], b[j]).square()
            out[i, j] = d.min(1).values.mean() + d.min(0).values.mean()
    return out


def clouds(n: int, points: int) -> tuple[np.ndarray, str]:
    from seqmodels.paths import data_path

    if data_path("points", "modelnet10_pcd") is not None:
        from domains.points.data import load_source

        ps = load_source("modelnet10", "val", ("chair",), n_points=points)
        return ps.points[:n], "modelnet10 chair (validation split)"
    from domains.points.synthetic import make_shapes

    shapes = make_shapes(n // 5 + 1, points)[:n]
    return np.stack([s.points for s in shapes]), "synthetic"


def cdist_chamfer(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(x, y).square()
    return d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)


def loss_ms(fn, x: torch.Tensor, y: torch.Tensor, reps: int = 5) -> float:
    """Median ms of one forward + backward of fn(x, y).sum()."""
    times = []
    for _ in range(reps):
        xg = x.clone().requires_grad_(True)
        t = time.perf_counter()
        fn(xg, y).sum().backward()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def timed(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", type=int, default=48, help="clouds in the all-pairs matrix")
    p.add_argument("--points", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None, help="CrossScaleAR checkpoint for shapes/s")
    p.add_argument("--generate", type=int, default=64, help="shapes to generate")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from domains.points.metrics import chamfer_matrix, chamfer_matrix_torch

    x, source = clouds(args.shapes, args.points)
    a = torch.from_numpy(x)
    pairs = len(x) * len(x)
    t_kd, m_kd = timed(chamfer_matrix, x, x)
    t_torch, m_torch = timed(chamfer_matrix_torch, a, a)
    n_naive = max(4, len(x) // 4)  # the naive loop on a corner of the matrix (it is slow)
    t_naive, m_naive = timed(naive_matrix, a[:n_naive], a[:n_naive])
    err = max(
        (m_kd[:n_naive, :n_naive] - m_naive).abs().max().item(),
        (m_torch[:n_naive, :n_naive] - m_naive).abs().max().item(),
    )
    result = {
        "benchmark": "points_chamfer_matrix",
        "source": source,
        "points": args.points,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "loadavg": os.getloadavg()[0],
        "kdtree_pairs_per_s": pairs / t_kd,
        "torch_chunked_pairs_per_s": pairs / t_torch,
        "naive_cdist_pairs_per_s": n_naive * n_naive / t_naive,
        "max_abs_difference": err,
    }
    result["kdtree_vs_naive"] = result["kdtree_pairs_per_s"] / result["naive_cdist_pairs_per_s"]
    result["torch_vs_naive"] = (
        result["torch_chunked_pairs_per_s"] / result["naive_cdist_pairs_per_s"]
    )
    from domains.points.metrics import chamfer_distance

    g = torch.Generator().manual_seed(0)
    decoded = torch.rand(16, 256, 3, generator=g) * 2 - 1
    target = a[torch.randint(len(a), (16,), generator=g)]
    matched, full = [], []
    for _ in range(3):  # alternating rounds
        matched.append(loss_ms(chamfer_distance, decoded, target))
        full.append(loss_ms(cdist_chamfer, decoded, target))
    result["loss_matched_pairs_ms"] = float(np.median(matched))
    result["loss_cdist_ms"] = float(np.median(full))
    result["loss_speedup"] = result["loss_cdist_ms"] / result["loss_matched_pairs_ms"]
    if args.model:
        from domains.points.ar import load_ar
        from domains.points.evaluate import generate_clouds

        ar = load_ar(args.model)
        labels = [i % len(ar.classes) for i in range(args.generate)]
        generate_clouds(ar, labels[:4], args.points)  # warm-up
        t_gen, _ = timed(generate_clouds, ar, labels, args.points)
        result["shapes_per_s"] = args.generate / t_gen
    print(json.dumps(result))


if __name__ == "__main__":
    main()
