"""Affinities from instances, affinities back to instances (watershed), and the metrics.

Affinity channel c at voxel v is 1 when v and its neighbour v - offset_c belong to the same
non-zero instance (offsets (1,0,0), (0,1,0), (0,0,1): z, y, x), waterz's convention.
"""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
from scipy import ndimage

from .volume import VolumeError

OFFSETS = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
# Long-range offsets as connectomics codebases add them (auxiliary targets that teach the
# model context beyond one voxel; segmentation reads only the three nearest ones).
LONG_RANGE = ((0, 9, 0), (0, 0, 9), (0, 27, 0), (0, 0, 27))


def check_offsets(offsets) -> tuple[tuple[int, int, int], ...]:
    """Offsets as tuples; the first three must be the nearest-neighbour z, y, x ones,
    which the watershed reads."""
    offs = tuple(tuple(int(v) for v in o) for o in offsets)
    if offs[:3] != OFFSETS or any(len(o) != 3 for o in offs):
        raise ValueError(f"affinity offsets must start with {list(OFFSETS)}, got {list(offs)}")
    return offs


def affinities(labels: np.ndarray, offsets=OFFSETS) -> tuple[np.ndarray, np.ndarray]:
    """(C, Z, Y, X) float32 affinities, one channel per offset, and a validity mask (False
    where the neighbour v - offset falls outside the volume)."""
    if labels.ndim != 3:
        raise VolumeError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    aff = np.zeros((len(offsets), *labels.shape), dtype=np.float32)
    valid = np.zeros((len(offsets), *labels.shape), dtype=bool)
    for c, off in enumerate(offsets):
        here, prev = [], []
        for o, n in zip(off, labels.shape):
            here.append(slice(max(o, 0), n + min(o, 0)))
            prev.append(slice(max(-o, 0), n - max(o, 0)))
        cur, nb = labels[tuple(here)], labels[tuple(prev)]
        aff[(c, *here)] = (cur == nb) & (cur != 0)
        valid[(c, *here)] = True
    return aff, valid


def balanced_weights(aff: np.ndarray, valid: np.ndarray, clip: float = 10.0) -> np.ndarray:
    """Per-channel class-balancing weights for BCE: positives and negatives each carry half
    of a channel's weight (membranes are the minority class)."""
    w = np.zeros_like(aff, dtype=np.float32)
    for c in range(aff.shape[0]):
        v = valid[c]
        n = v.sum()
        if n == 0:
            continue
        pos = float(aff[c][v].mean())
        wp = min(clip, 0.5 / max(pos, 1e-6))
        wn = min(clip, 0.5 / max(1 - pos, 1e-6))
        w[c] = np.where(aff[c] > 0.5, wp, wn) * v
    return w


def watershed(
    aff: np.ndarray,
    threshold: float = 0.5,
    per_section: bool = False,
    method: str = "auto",
    seed_threshold: float = 0.9,
    seed_distance: float = 1.0,
    scoring: str = "mean",
) -> np.ndarray:
    """Affinities (C >= 3, Z, Y, X) in [0, 1] (the first three: z, y, x nearest
    neighbours) -> instances (Z, Y, X), numbered from 1.

    Fragments: a seeded watershed (scikit-image) on the boundary map 1 - mean affinity,
    seeds being the cores (distance > seed_distance) of regions with mean affinity >
    seed_threshold. Method "waterz" (what "auto" uses when waterz is installed) then
    agglomerates the fragments while the boundary's affinity score (`scoring`: "mean", or
    "median" as TokenUnify runs waterz, or "quantile:Q") stays above `threshold`;
    "skimage" merges adjacent fragments whose mean boundary affinity is above `threshold`
    (a region adjacency graph cut, scikit-image's `rag_boundary` + `cut_threshold`). per_section: 2D segmentation of each z-section from
    the y and x channels (ISBI, whose instances are per section).
    """
    if aff.ndim != 4 or aff.shape[0] < 3:
        raise VolumeError(f"affinities must be (C >= 3, Z, Y, X), got shape {aff.shape}")
    aff = aff[:3]
    score = _scoring_function(scoring)
    if method == "auto":
        method = "waterz" if _has_waterz() else "skimage"
    if method not in ("waterz", "skimage"):
        raise ValueError(f"unknown watershed method {method!r}: auto, waterz or skimage")
    if per_section:
        out = np.zeros(aff.shape[1:], dtype=np.int64)
        offset = 0
        for z in range(aff.shape[1]):
            a = aff[:, z : z + 1].copy()
            a[0] = 0.0  # no links between sections
            seg = _segment(
                a, a[1:].mean(0), threshold, method, seed_threshold, seed_distance, score
            )
            out[z] = seg[0] + offset * (seg[0] > 0)
            offset += int(seg.max())
        return out
    return _segment(aff, aff.mean(0), threshold, method, seed_threshold, seed_distance, score)


def _scoring_function(scoring: str) -> tuple[str, int]:
    """waterz scoring function and queue discretisation for a short name; the quantile
    variants are those waterz ships prebuilt (256-bin histograms)."""
    if scoring == "mean":
        return "OneMinus<MeanAffinity<RegionGraphType,ScoreValue>>", 0
    q = 50 if scoring == "median" else None
    if scoring.startswith("quantile:"):
        q = int(scoring.split(":", 1)[1])
    if q is None or not 0 < q < 100:
        raise ValueError(f"unknown scoring {scoring!r}: mean, median or quantile:Q (0 < Q < 100)")
    return f"OneMinus<HistogramQuantileAffinity<RegionGraphType,{q},ScoreValue,256,false>>", 256


def _segment(aff, mean_aff, threshold, method, seed_threshold, seed_distance, score):
    frag = _seeded_ws(mean_aff, seed_threshold, seed_distance)
    if frag.max() <= 1:
        return frag
    if method == "skimage":
        return _rag_merge(frag, mean_aff, threshold)
    import waterz

    function, bins = score
    with _quiet_stdout():  # waterz's C++ core prints progress lines to fd 1
        seg = next(
            iter(
                waterz.agglomerate(
                    np.ascontiguousarray(aff, dtype=np.float32),
                    [1.0 - threshold],
                    fragments=frag.astype(np.uint64),
                    scoring_function=function,
                    discretize_queue=bins,
                )
            )
        )
    return seg.astype(np.int64)


def _rag_merge(frag: np.ndarray, mean_aff: np.ndarray, threshold: float) -> np.ndarray:
    """Merge adjacent fragments whose boundary's mean affinity exceeds `threshold`."""
    from skimage import graph
    from skimage.segmentation import relabel_sequential

    boundary = (1.0 - mean_aff).astype(np.float64)
    if frag.shape[0] == 1:  # one section: a 2D graph (rag_boundary is per-pixel neighbours)
        rag = graph.rag_boundary(frag[0], boundary[0])
        merged = graph.cut_threshold(frag[0], rag, 1.0 - threshold, in_place=False)[None]
    else:
        rag = graph.rag_boundary(frag, boundary)
        merged = graph.cut_threshold(frag, rag, 1.0 - threshold, in_place=False)
    return relabel_sequential(merged + 1)[0].astype(np.int64)


def _seeded_ws(mean_aff: np.ndarray, seed_threshold: float, seed_distance: float) -> np.ndarray:
    from skimage.measure import label
    from skimage.segmentation import watershed as ws

    cores = ndimage.distance_transform_edt(mean_aff > seed_threshold) > seed_distance
    markers = label(cores)
    if markers.max() == 0:  # nothing confident: one segment
        return np.ones(mean_aff.shape, dtype=np.int64)
    return ws(1.0 - mean_aff, markers).astype(np.int64)


@contextlib.contextmanager
def _quiet_stdout():
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def tune(
    aff: np.ndarray,
    labels: np.ndarray,
    per_section: bool,
    method: str = "auto",
    seed_thresholds=(0.3, 0.45, 0.6, 0.75, 0.9),
    thresholds=(0.1, 0.3, 0.5, 0.7),
    scoring: str = "mean",
) -> dict:
    """Watershed parameters with the lowest VOI on labelled (tuning) sections.

    The grid reaches down to seed threshold 0.3: a network's affinities need not be
    calibrated, and one seed of the ISBI protocol predicted interiors at 0.53-0.60 at most
    (its head output capped where the ReLU units fell silent), so a grid starting at 0.6
    found no seed anywhere and scored one segment per section (VOI 5.18) although its
    boundaries were as good as the other seeds' (VOI 0.92 on the tuning sections at 0.45)."""
    best = None
    for st in seed_thresholds:
        for th in thresholds:
            seg = watershed(aff, th, per_section, method, seed_threshold=st, scoring=scoring)
            voi = metrics(labels, seg)["voi"]
            if best is None or voi < best["voi"]:
                best = {"seed_threshold": st, "threshold": th, "voi": voi}
    return best


def threshold_segmentation(raw: np.ndarray, threshold: float, per_section: bool) -> np.ndarray:
    """The trivial baseline: voxels brighter than `threshold` (membranes are dark in EM)
    split into connected components (per section when instances are per section)."""
    from skimage.measure import label

    fg = raw > threshold
    if not per_section:
        return label(fg, connectivity=1).astype(np.int64)
    out = np.zeros(raw.shape, dtype=np.int64)
    offset = 0
    for z in range(raw.shape[0]):
        lab = label(fg[z], connectivity=1)
        out[z] = np.where(lab > 0, lab + offset, 0)
        offset += int(lab.max())
    return out


def tune_threshold_baseline(
    raw: np.ndarray, labels: np.ndarray, per_section: bool, grid=None
) -> dict:
    """The intensity threshold (of the normalised raw) with the lowest VOI on labelled
    tuning sections."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2) if grid is None else grid
    best = None
    for t in grid:
        voi = metrics(labels, threshold_segmentation(raw, float(t), per_section))["voi"]
        if best is None or voi < best["voi"]:
            best = {"threshold": float(t), "voi": voi}
    return best


def _has_waterz() -> bool:
    try:
        import waterz  # noqa: F401
    except ImportError:
        return False
    return True


def metrics(gt: np.ndarray, seg: np.ndarray) -> dict[str, float]:
    """VOI split (over-segmentation, H(seg|gt)), VOI merge (H(gt|seg)) and adapted Rand
    error, scikit-image's implementations, ground-truth label 0 ignored."""
    from skimage.metrics import adapted_rand_error, variation_of_information

    if gt.shape != seg.shape:
        raise VolumeError(f"segmentation {seg.shape} and ground truth {gt.shape} differ")
    gt, seg = gt.astype(np.int64), seg.astype(np.int64)
    split, merge = variation_of_information(gt, seg, ignore_labels=[0])
    arand = adapted_rand_error(gt, seg, ignore_labels=[0])[0]
    return {
        "voi_split": float(split),
        "voi_merge": float(merge),
        "voi": float(split + merge),
        "arand": float(arand),
    }
