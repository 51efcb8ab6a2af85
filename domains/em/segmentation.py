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


def affinities(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, Z, Y, X) float32 affinities and a (3, Z, Y, X) validity mask (False where the
    neighbour falls outside the volume)."""
    if labels.ndim != 3:
        raise VolumeError(f"labels must be 3D (z, y, x), got shape {labels.shape}")
    aff = np.zeros((3, *labels.shape), dtype=np.float32)
    valid = np.zeros((3, *labels.shape), dtype=bool)
    for c, off in enumerate(OFFSETS):
        a = c  # the axis of this offset
        n = labels.shape[a]
        here = [slice(None)] * 3
        prev = [slice(None)] * 3
        here[a], prev[a] = slice(off[a], n), slice(0, n - off[a])
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
) -> np.ndarray:
    """Affinities (3, Z, Y, X) in [0, 1] -> instances (Z, Y, X), numbered from 1.

    Fragments: a seeded watershed (scikit-image) on the boundary map 1 - mean affinity,
    seeds being the cores (distance > seed_distance) of regions with mean affinity >
    seed_threshold. Method "waterz" (what "auto" uses when waterz is installed) then
    agglomerates the fragments by mean affinity while it stays above `threshold`;
    "skimage" stops at the fragments. per_section: 2D segmentation of each z-section from
    the y and x channels (ISBI, whose instances are per section).
    """
    if aff.ndim != 4 or aff.shape[0] != 3:
        raise VolumeError(f"affinities must be (3, Z, Y, X), got shape {aff.shape}")
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
            seg = _segment(a, a[1:].mean(0), threshold, method, seed_threshold, seed_distance)
            out[z] = seg[0] + offset * (seg[0] > 0)
            offset += int(seg.max())
        return out
    return _segment(aff, aff.mean(0), threshold, method, seed_threshold, seed_distance)


def _segment(aff, mean_aff, threshold, method, seed_threshold, seed_distance) -> np.ndarray:
    frag = _seeded_ws(mean_aff, seed_threshold, seed_distance)
    if method == "skimage" or frag.max() <= 1:
        return frag
    import waterz

    with _quiet_stdout():  # waterz's C++ core prints progress lines to fd 1
        seg = next(
            iter(
                waterz.agglomerate(
                    np.ascontiguousarray(aff, dtype=np.float32),
                    [1.0 - threshold],
                    fragments=frag.astype(np.uint64),
                )
            )
        )
    return seg.astype(np.int64)


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
    seed_thresholds=(0.6, 0.75, 0.9),
    thresholds=(0.3, 0.5, 0.7),
) -> dict:
    """Watershed parameters with the lowest VOI on labelled (training) sections."""
    best = None
    for st in seed_thresholds:
        for th in thresholds:
            seg = watershed(aff, th, per_section, method, seed_threshold=st)
            voi = metrics(labels, seg)["voi"]
            if best is None or voi < best["voi"]:
                best = {"seed_threshold": st, "threshold": th, "voi": voi}
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
