"""The evaluation pipeline behind `seqmodels points generate | evaluate`.

Generation figures are PointFlow's (metrics.py) per class against the validation split,
every cloud `shape_bbox`-normalised, beside two references computed the same way:
`train_copy` (as many random training shapes, unchanged: what memorising gets) and
`single_shape` (one training shape repeated: a trivial generator with no diversity), and,
given the tokenizer, `tokenized_train_copy` (those training shapes through the tokenizer).
"""

from __future__ import annotations

import numpy as np
import torch

from .data import PointSet
from .io import shape_bbox
from .metrics import chamfer_distance, pointflow_metrics, train_copy_oracle


def generate_clouds(
    ar,
    labels: list[int],
    n_points: int = 1024,
    guidance: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    batch_size: int = 50,
    progress: bool = False,
    oversample: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Clouds (len(labels), n_points, 3) and their token ids, sampled in batches
    (`oversample`: see `PointTokenizer.decode`)."""
    g = torch.Generator().manual_seed(seed)
    clouds, ids = [], []
    starts = range(0, len(labels), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="generating", unit="batch")
    for i in starts:
        lab = torch.tensor(labels[i : i + batch_size])
        out = ar.generate(lab, guidance, temperature, top_k, top_p, generator=g)
        clouds.append(
            ar.tok.decode(out, n_points, seed=seed + i, oversample=oversample).cpu().numpy()
        )
        ids.append(out.cpu().numpy())
    return np.concatenate(clouds), np.concatenate(ids)


def generation_metrics(
    samples: np.ndarray,
    refs: np.ndarray,
    train: np.ndarray | None,
    emd: bool = False,
    emd_points: int = 256,
    seed: int = 0,
    tokenizer=None,
    references: bool = True,
    oversample: int = 1,
) -> dict[str, dict[str, float]]:
    """{"model", "train_copy", "single_shape"} PointFlow metrics vs refs, and with a
    tokenizer "tokenized_train_copy": the same training shapes encoded and decoded, i.e.
    what an AR model that memorised its training tokens would score (the tokenizer's
    ceiling on generation). `references=False`: "model" only, `train` unread (the
    references depend only on refs, train, seed and tokenizer, so models scored alike can
    share one set). `oversample`: the tokenized copy decoded as the samples were."""
    samples, refs = shape_bbox(samples), shape_bbox(refs)
    n = len(samples)
    cache: dict = {}  # the reference-reference matrices, computed once
    out = {"model": pointflow_metrics(samples, refs, emd, emd_points, ref_matrices=cache)}
    if not references:
        return out
    train = shape_bbox(train)
    one = train[np.random.default_rng(seed).integers(len(train))]
    out["train_copy"] = train_copy_oracle(train, refs, n, seed, emd, emd_points, cache)
    out["single_shape"] = pointflow_metrics(
        np.repeat(one[None], n, 0), refs, emd, emd_points, ref_matrices=cache
    )
    if tokenizer is not None:
        idx = np.random.default_rng(seed).choice(len(train), min(n, len(train)), replace=False)
        x = torch.from_numpy(train[idx])
        rec = torch.cat(
            [
                tokenizer.decode(
                    tokenizer.encode(x[i : i + 32]),
                    train.shape[1],
                    seed=seed,
                    oversample=oversample,
                )
                for i in range(0, len(x), 32)
            ]
        )
        out["tokenized_train_copy"] = pointflow_metrics(
            shape_bbox(rec.numpy()), refs, emd, emd_points, ref_matrices=cache
        )
    return out


@torch.no_grad()
def reconstruction_by_level(
    tok,
    ps: PointSet,
    n_points: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    oversample: int = 1,
) -> list[float]:
    """Mean Chamfer distance between each shape and its decoding from levels 1..S."""
    n_points = n_points or ps.points.shape[1]
    totals = np.zeros(len(tok.sizes))
    for i in range(0, len(ps), batch_size):
        x = torch.from_numpy(ps.points[i : i + batch_size])
        ids = tok.encode(x)
        for k in range(1, len(tok.sizes) + 1):
            rec = tok.decode(ids, n_points, levels=k, seed=seed, oversample=oversample)
            totals[k - 1] += chamfer_distance(rec, x).sum().item()
    return (totals / len(ps)).tolist()
