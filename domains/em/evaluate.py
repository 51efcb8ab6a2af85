"""Held-out evaluation: tiled affinity prediction, watershed, metrics, and figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .segmentation import metrics, tune, watershed


def evaluate_volume(
    model, raw: np.ndarray, labels: np.ndarray, per_section: bool, ws: dict
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics of the model's segmentation of `raw` against `labels` (0 ignored); `ws`
    holds the watershed's method, threshold and seed_threshold."""
    aff = model.predict_volume(raw)
    seg = watershed(aff, per_section=per_section, **ws)
    aff = aff[:3]  # the figures show the nearest-neighbour channels
    m = metrics(labels, seg)
    m["n_segments"] = float(len(np.unique(seg)))
    m["n_true"] = float(len(np.unique(labels[labels > 0])))
    return m, aff, seg


def tune_watershed(
    model,
    raw: np.ndarray,
    labels: np.ndarray,
    per_section: bool,
    method: str,
    scoring: str = "mean",
) -> dict:
    """Pick the watershed thresholds on labelled tuning sections (not the test ones)."""
    best = tune(model.predict_volume(raw), labels, per_section, method, scoring=scoring)
    return {
        "method": method,
        "scoring": scoring,
        "threshold": best["threshold"],
        "seed_threshold": best["seed_threshold"],
    }


def boundary_figure(
    raw: np.ndarray,
    aff: np.ndarray,
    seg: np.ndarray,
    labels: np.ndarray,
    path: Path,
    title: str,
    z: int | None = None,
    z_offset: int = 0,
) -> None:
    """Predicted boundary probability (1 - mean in-plane affinity) over the raw section,
    beside the watershed's segment borders (red) and the true ones (cyan)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    z = raw.shape[0] // 2 if z is None else z
    boundary = 1.0 - aff[1:, z].mean(0)
    fig, ax = plt.subplots(1, 2, figsize=(10, 5.2))
    ax[0].imshow(raw[z], cmap="gray")
    ax[0].imshow(np.ma.masked_less(boundary, 0.5), cmap="autumn", alpha=0.55, vmin=0, vmax=1)
    ax[0].set_title("predicted boundaries (p > 0.5) over raw")
    rgb = np.repeat(raw[z][..., None], 3, axis=-1).astype(np.float32)
    rgb[find_boundaries(labels[z], mode="inner")] = (0.0, 0.9, 0.9)
    rgb[find_boundaries(seg[z], mode="inner")] = (1.0, 0.1, 0.1)
    ax[1].imshow(np.clip(rgb, 0, 1))
    ax[1].set_title("watershed borders (red), true borders (cyan)")
    for a in ax:
        a.axis("off")
    fig.suptitle(f"{title}, section {z + z_offset}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def compare_figure(rows: dict[str, dict], path: Path) -> None:
    """Bars of VOI split / merge and ARAND per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    keys = ("voi_split", "voi_merge", "arand")
    fig, ax = plt.subplots(1, 3, figsize=(11, 3.4))
    for a, k in zip(ax, keys):
        a.bar(names, [rows[n][k] for n in names], color=["C0", "C1", "C2", "C3"][: len(names)])
        a.set_title(f"{k} (lower is better)")
        a.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def curve_figure(arms: dict[str, dict[int, dict]], path: Path) -> None:
    """VOI (mean +- sd) against the number of labelled sections, one line per arm, and
    the threshold baseline (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (arm, pts) in enumerate(arms.items()):
        ns = sorted(pts)
        ax.errorbar(ns, [pts[n]["voi"] for n in ns], yerr=[pts[n]["voi_sd"] for n in ns],
                    marker="o", capsize=3, label=arm, color=f"C{i}")  # fmt: skip
    base = [v["baseline_voi"] for pts in arms.values() for v in pts.values() if v["baseline_voi"]]
    if base:
        ax.axhline(float(np.mean(base)), ls=":", color="grey", label="threshold baseline")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("labelled training sections")
    ax.set_ylabel("VOI split + merge (lower is better)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
