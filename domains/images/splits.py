"""Fixed, documented train / val / test splits of every image source.

- `mnist`: train = the first 45,000 images of `mnist_train.npz`, val = its last 5,000,
  test = `mnist_test.npz` (10,000). Model selection uses val only; test is for the final figures.
- `digits` and any folder / array: one permutation with seed 0; test = 20 %, val = 10 %,
  train = the rest.
"""

from __future__ import annotations

import numpy as np

from .io import ImageError, ImageSet, load_images

SPLITS = ("train", "val", "test", "all")
MNIST_VAL = 5_000


def _fractions(n: int, split: str, seed: int = 0) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(0.2 * n), round(0.1 * n)
    parts = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    return np.sort(parts[split])


def load_split(
    source: str,
    split: str = "train",
    size: int | None = None,
    mode: str | None = None,
    crop: int | None = None,
    limit: int | None = None,
) -> ImageSet:
    """The images of one split (the first `limit` of it when given), shaped by the flags."""
    if split not in SPLITS:
        raise ImageError(f"split {split!r}: expected one of {SPLITS}")
    if source == "mnist":
        data = load_images("mnist", "test" if split == "test" else "train", size, mode, crop)
        if split == "train":
            data = data.subset(slice(0, len(data) - MNIST_VAL))
        elif split == "val":
            data = data.subset(slice(len(data) - MNIST_VAL, None))
    else:
        data = load_images(source, "train", size, mode, crop)
        if split != "all":
            data = data.subset(_fractions(len(data), split))
    if limit:
        data = data.subset(slice(0, limit))
    return data
