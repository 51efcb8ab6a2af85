"""Evaluation pipelines behind `seqmodels images evaluate`: reconstruction at every k for
one or more tokenizers (PSNR, SSIM, the classifier-feature Frechet distance of the
reconstructions), and the scores of generated samples against real images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .io import ImageSet, write_grid
from .metrics import FeatureClassifier, classify, frechet_distance, reconstruction_scores


def default_ks(n_tokens: int) -> list[int]:
    """1, 2, 4, ... up to K (K included)."""
    ks = [2**i for i in range(n_tokens.bit_length()) if 2**i <= n_tokens]
    return ks if ks[-1] == n_tokens else [*ks, n_tokens]


@torch.no_grad()
def reconstruct_all(tokenizer, images: np.ndarray, ks: list[int], batch: int = 256):
    """{k: reconstructions (N, C, H, W)}; images are encoded once, decoded at each k."""
    x = torch.from_numpy(images)
    ids = torch.cat(
        [tokenizer.encode({"image": x[s : s + batch]}) for s in range(0, len(x), batch)]
    )
    out = {}
    for k in ks:
        g = torch.Generator().manual_seed(0)
        parts = [
            tokenizer.decode(ids[s : s + batch, :k], generator=g) for s in range(0, len(x), batch)
        ]
        out[k] = torch.cat(parts).numpy()
    return out, ids


def one_per_class(data: ImageSet, n: int = 10) -> np.ndarray:
    """Indices of the first image of each class (the first n images without labels)."""
    if data.labels is None:
        return np.arange(min(n, len(data)))
    seen: dict[int, int] = {}
    for i, y in enumerate(data.labels.tolist()):
        seen.setdefault(y, i)
    return np.array([seen[y] for y in sorted(seen)][:n])


def evaluate_reconstruction(
    tokenizers: dict[str, torch.nn.Module],
    data: ImageSet,
    out: Path,
    ks: list[int] | None = None,
    classifier: FeatureClassifier | None = None,
    reference: np.ndarray | None = None,
) -> dict:
    """Scores per tokenizer and k, a coarse-to-fine PNG per tokenizer (first row the
    originals, then one row per k), and a PSNR-vs-k plot of all tokenizers."""
    out.mkdir(parents=True, exist_ok=True)
    shown = one_per_class(data)
    f_ref = classify(classifier, reference)[0] if classifier is not None else None
    metrics: dict = {}
    for name, tok in tokenizers.items():
        tok_ks = ks or default_ks(tok.n_tokens)
        recon, _ = reconstruct_all(tok, data.images, tok_ks)
        rows = [data.images[shown]]
        for k in tok_ks:
            m = reconstruction_scores(torch.from_numpy(recon[k]), torch.from_numpy(data.images))
            if f_ref is not None:
                m["feature_fd"] = frechet_distance(classify(classifier, recon[k])[0], f_ref)
            metrics[f"{name}/k{k}"] = m
            rows.append(recon[k][shown])
        psnrs = [metrics[f"{name}/k{k}"]["psnr"] for k in tok_ks]
        metrics[f"{name}/psnr_increasing_in_k"] = bool(all(np.diff(psnrs) > 0))
        write_grid(np.concatenate(rows), out / f"reconstructions_{name}.png", nrow=len(shown))
    if f_ref is not None:
        n = len(data.images)
        metrics["feature_fd_floor_test"] = frechet_distance(
            classify(classifier, data.images)[0], f_ref
        )
        metrics["n_images"] = n
    names = list(tokenizers)
    metrics.update(compare_to_first(metrics, names))
    psnr_plot(metrics, names, out / "psnr_vs_k.png")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def compare_to_first(metrics: dict, names: list[str]) -> dict:
    """The first tokenizer against each other one: higher PSNR at every shared k < K, and
    (with a classifier) which has the lower feature Frechet distance at every shared k."""
    out = {}
    a = names[0]
    for b in names[1:]:
        ks = sorted(
            int(key.split("/k")[1])
            for key in metrics
            if key.startswith(f"{a}/k") and f"{b}/k{key.split('/k')[1]}" in metrics
        )
        below = [k for k in ks if k < max(ks)] if ks else []
        ma, mb = (lambda k, n=n: metrics[f"{n}/k{k}"] for n in (a, b))
        out[f"{a}_beats_{b}_psnr_all_k_below_K"] = bool(
            below and all(ma(k)["psnr"] > mb(k)["psnr"] for k in below)
        )
        if ks and "feature_fd" in ma(ks[0]):
            out[f"{b}_lower_feature_fd_than_{a}_all_k"] = bool(
                all(mb(k)["feature_fd"] < ma(k)["feature_fd"] for k in ks)
            )
    return out


def psnr_plot(metrics: dict, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name in names:
        pts = sorted(
            (int(k.split("/k")[1]), v["psnr"])
            for k, v in metrics.items()
            if k.startswith(f"{name}/k") and isinstance(v, dict)
        )
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("tokens kept (k)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("reconstruction, coarse to fine")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def per_class_grid(samples: np.ndarray, classes: np.ndarray, path: Path, per_row: int = 10) -> Path:
    """One row per class, the first `per_row` samples of it."""
    rows = []
    for c in sorted(set(classes.tolist())):
        idx = np.flatnonzero(classes == c)[:per_row]
        row = samples[idx]
        if len(row) < per_row:  # pad short rows with white
            row = np.concatenate([row, np.ones((per_row - len(row), *row.shape[1:]), row.dtype)])
        rows.append(row)
    return write_grid(np.concatenate(rows), path, nrow=per_row)
