"""Image readers and the PNG grid writer.

Every reader returns an `ImageSet`: float32 images (N, C, H, W) in [0, 1], optional integer
labels, one name per image (file or `array[i]`) and the notes written while reading (files
skipped, converted or resized). Sources:

- a folder of image files (Pillow); class subfolders (`root/3/x.png`) give labels,
- a `.npy` array or a `.npz` with `images` (and `labels`): (N, H, W), (N, H, W, C) or (N, C, H, W),
- `digits` (scikit-learn's 8x8 digits, 1,797 images), `mnist` (the shared npz files),
  `skimage:NAME` (a scikit-image sample such as `skimage:camera`).

Bad input does not stop a batch: an unreadable or truncated file, or an array record with
NaN / inf, is skipped with a note naming it; an image of another size or mode is resized or
converted with a note. Only an empty result is an error (`ImageError`).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqmodels.datasets import fetch_hint
from seqmodels.paths import data_path

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
MODES = {"L": 1, "RGB": 3}
MNIST_FILES = {"train": "mnist_train.npz", "test": "mnist_test.npz"}


class ImageError(ValueError):
    """Input that yields no usable image; the message names the file."""


@dataclass
class ImageSet:
    images: np.ndarray  # float32 (N, C, H, W) in [0, 1]
    labels: np.ndarray | None  # int64 (N,) or None
    names: list[str]
    source: str
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: np.ndarray | slice) -> ImageSet:
        idx = np.arange(len(self))[index]
        labels = None if self.labels is None else self.labels[idx]
        return ImageSet(
            self.images[idx], labels, [self.names[i] for i in idx], self.source, self.notes
        )

    def report_notes(self, limit: int = 20) -> None:
        """Print the reading notes to stderr (the first `limit`, then a count)."""
        for note in self.notes[:limit]:
            print(f"images: {note}", file=sys.stderr)
        if len(self.notes) > limit:
            print(f"images: ... and {len(self.notes) - limit} more notes", file=sys.stderr)


# -- geometry -------------------------------------------------------------------------------
def center_crop(images: np.ndarray, crop: int) -> np.ndarray:
    """The central crop x crop window of (N, C, H, W) images."""
    h, w = images.shape[-2:]
    if crop > min(h, w):
        raise ImageError(f"crop {crop} is larger than the images ({h}x{w})")
    top, left = (h - crop) // 2, (w - crop) // 2
    return images[..., top : top + crop, left : left + crop]


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """(N, C, H, W) -> (N, C, size, size), antialiased bilinear (torch's interpolate)."""
    import torch
    import torch.nn.functional as F

    if images.shape[-2:] == (size, size):
        return images
    t = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0, 1).numpy()


def to_mode(images: np.ndarray, mode: str) -> np.ndarray:
    """Grey (1 channel) or RGB (3 channels); grey from RGB with ITU-R 601 luma weights."""
    if mode not in MODES:
        raise ImageError(f"mode {mode!r}: expected one of {sorted(MODES)}")
    c = images.shape[1]
    if c == MODES[mode]:
        return images
    if mode == "L":
        w = np.array([0.299, 0.587, 0.114], dtype=np.float32)[:, None, None]
        return (images[:, :3] * w).sum(1, keepdims=True)
    return np.repeat(images[:, :1], 3, axis=1)


def shape_images(
    images: np.ndarray, size: int | None = None, crop: int | None = None, mode: str | None = None
) -> np.ndarray:
    """Crop (centre), then resize, then convert: the order a user expects from the flags."""
    if mode is not None:
        images = to_mode(images, mode)
    if crop:
        images = center_crop(images, crop)
    if size:
        images = resize(images, size)
    return np.ascontiguousarray(images, dtype=np.float32)


# -- folders --------------------------------------------------------------------------------
def _image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)


def read_folder(
    root: str | Path, size: int | None = None, mode: str | None = None, crop: int | None = None
) -> ImageSet:
    """Every image file under `root` (sorted). Class subfolders give labels (folder names
    sorted, numeric names as their number). The first readable image fixes the size and
    mode when `size` / `mode` are not given; others are resized / converted with a note."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise ImageError(f"{root}: not a folder")
    files = _image_files(root)
    if not files:
        raise ImageError(f"{root}: no image files ({', '.join(sorted(SUFFIXES))})")
    notes: list[str] = []
    arrays, names, classes = [], [], []
    target_mode, target_size = mode, (size, size) if size else None
    for path in files:
        try:
            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not later
                if target_mode is None:
                    target_mode = "RGB" if im.mode in ("RGB", "RGBA", "P", "CMYK") else "L"
                if im.mode != target_mode:
                    notes.append(f"{path}: mode {im.mode} converted to {target_mode}")
                    im = im.convert(target_mode)
                if not crop and target_size is None:
                    target_size = im.size
                if crop:
                    w, h = im.size
                    if crop > min(w, h):
                        raise ImageError(f"crop {crop} is larger than the image ({w}x{h})")
                    left, top = (w - crop) // 2, (h - crop) // 2
                    im = im.crop((left, top, left + crop, top + crop))
                    target_size = target_size or im.size
                if im.size != target_size:
                    notes.append(
                        f"{path}: size {im.size[0]}x{im.size[1]} resized to {target_size[0]}x{target_size[1]}"
                    )
                    im = im.resize(target_size, Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            notes.append(f"{path}: unreadable, skipped ({type(err).__name__}: {err})")
            continue
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
        names.append(str(path.relative_to(root)))
        rel = path.relative_to(root).parts
        classes.append(rel[0] if len(rel) > 1 else None)
    if not arrays:
        raise ImageError(f"{root}: none of the {len(files)} image files could be read: {notes[0]}")
    labels = None
    if all(c is not None for c in classes):
        uniq = sorted(set(classes), key=lambda c: (not c.isdigit(), int(c) if c.isdigit() else c))
        if all(c.isdigit() for c in uniq):
            labels = np.array([int(c) for c in classes], dtype=np.int64)
        else:
            labels = np.array([uniq.index(c) for c in classes], dtype=np.int64)
    return ImageSet(np.stack(arrays), labels, names, str(root), notes)


# -- arrays ---------------------------------------------------------------------------------
def _as_nchw(a: np.ndarray, where: str) -> np.ndarray:
    if a.ndim == 2:
        a = a[None]
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4:
        if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3):
            a = a.transpose(0, 3, 1, 2)
        return a[:, :3]
    raise ImageError(f"{where}: expected (N, H, W), (N, H, W, C) or (N, C, H, W), got {a.shape}")


def from_array(
    a: np.ndarray, labels: np.ndarray | None, where: str, notes: list[str] | None = None
) -> ImageSet:
    """Scale an image array into [0, 1] (uint8 / 255; floats above 1 as 0..255) and drop
    records holding NaN or inf, each with a note naming it."""
    notes = [] if notes is None else notes
    a = _as_nchw(np.asarray(a), where)
    if a.dtype == np.uint8:
        x = a.astype(np.float32) / 255.0
    elif np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating):
        x = a.astype(np.float32)
        finite = x[np.isfinite(x)]
        if finite.size and finite.max() > 1.0:
            x = x / 255.0
    else:
        raise ImageError(f"{where}: dtype {a.dtype} is not a number type")
    bad = ~np.isfinite(x).reshape(len(x), -1).all(1)
    for i in np.flatnonzero(bad):
        notes.append(f"{where}[{i}]: NaN or inf pixels, skipped")
    keep = ~bad
    if not keep.any():
        raise ImageError(f"{where}: no image without NaN / inf ({len(x)} records)")
    names = [f"{where}[{i}]" for i in np.flatnonzero(keep)]
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)[keep]
    return ImageSet(np.clip(x[keep], 0, 1), lab, names, where, notes)


def read_array(path: str | Path, key: str = "images", labels_key: str = "labels") -> ImageSet:
    """A `.npy` image array, or a `.npz` with `key` (and `labels_key` when present)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: file not found")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ImageError(f"{path}: not a readable NumPy file ({err})") from err
    if isinstance(data, np.ndarray):
        return from_array(data, None, str(path))
    with data:
        if key not in data:
            raise ImageError(f"{path}: no array {key!r} (has {sorted(data.files)})")
        labels = data.get(labels_key)
        images = data[key]
    if labels is not None and len(labels) != len(images):
        raise ImageError(f"{path}: {len(labels)} labels for {len(images)} images")
    return from_array(images, labels, str(path))


# -- packaged and shared data ---------------------------------------------------------------
def load_digits() -> ImageSet:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    names = [f"digits[{i}]" for i in range(len(x))]
    return ImageSet(x, d.target.astype(np.int64), names, "digits")


def load_mnist(split: str) -> ImageSet:
    """The shared MNIST npz files (train 50,000, test 10,000; see the data README)."""
    if split not in MNIST_FILES:
        raise ImageError(f"MNIST split {split!r}: expected one of {sorted(MNIST_FILES)}")
    path = data_path("images", "mnist", MNIST_FILES[split])
    if path is None:
        raise ImageError(
            f"MNIST not found: expected images/mnist/{MNIST_FILES[split]} under SEQMODELS_DATA "
            f"(default ../shared/data); {fetch_hint('images/mnist/' + MNIST_FILES[split])}"
        )
    return read_array(path)


def load_skimage(name: str) -> ImageSet:
    """One scikit-image sample image (`camera`, `astronaut`, `coins`, ...)."""
    import skimage.data

    fn = getattr(skimage.data, name, None)
    if fn is None or not callable(fn):
        raise ImageError(f"skimage:{name}: scikit-image has no sample image of that name")
    try:
        a = np.asarray(fn())
    except Exception as err:  # some samples need a download this machine cannot make
        raise ImageError(f"skimage:{name}: could not be loaded ({err})") from err
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageError(f"skimage:{name}: not a 2-D image (shape {a.shape})")
    return from_array(a[None], None, f"skimage:{name}")


def load_images(
    source: str,
    split: str = "train",
    size: int | None = None,
    mode: str | None = None,
    crop: int | None = None,
) -> ImageSet:
    """Any source by name or path (see the module docstring), shaped by the flags."""
    if source == "digits":
        data = load_digits()
    elif source == "mnist":
        data = load_mnist(split)
    elif source.startswith("skimage:"):
        data = load_skimage(source.split(":", 1)[1])
    elif Path(source).is_dir():
        return read_folder(source, size, mode, crop)
    elif Path(source).suffix in (".npy", ".npz"):
        data = read_array(source)
    elif not Path(source).exists():
        raise ImageError(f"{source}: no such file or folder, and not digits / mnist / skimage:NAME")
    else:
        raise ImageError(f"{source}: expected a folder of images or a .npy / .npz file")
    data.images = shape_images(data.images, size, crop, mode)
    return data


# -- writing --------------------------------------------------------------------------------
def grid_array(images: np.ndarray, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one (H', W', C) uint8 mosaic, `nrow` images per row."""
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.ones((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i, im in enumerate(images):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, y : y + h, x : x + w] = np.clip(im, 0, 1)
    return (canvas.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def write_grid(
    images: np.ndarray, path: str | Path, nrow: int | None = None, min_cell: int = 28
) -> Path:
    """Write a PNG mosaic; tiny images are scaled up (nearest) to `min_cell` pixels."""
    from PIL import Image

    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]
    if len(images) == 0:
        raise ImageError(f"{path}: no images to write")
    scale = max(1, math.ceil(min_cell / images.shape[-1]))
    if scale > 1:
        images = images.repeat(scale, axis=-1).repeat(scale, axis=-2)
    grid = grid_array(images, nrow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    tmp = path.with_name(path.name + ".tmp")
    im.save(tmp, format="PNG")
    tmp.replace(path)  # atomic: a killed run leaves no half-written PNG
    return path
