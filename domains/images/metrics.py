"""Image metrics: reconstruction PSNR / SSIM, and generation scores in the feature space of
a small CNN classifier trained here on the real training images.

Generation scores (`generation_scores`):
- class accuracy: the fraction of generated images the classifier assigns to the class they
  were conditioned on;
- feature Frechet distance: the Frechet distance of Heusel et al. (2017) between Gaussians fit
  to the classifier's penultimate features. It is OURS, not Inception FID: the numbers are
  only comparable within this project, and always shown beside the real-test-vs-train floor;
- precision / recall of Kynkaanniemi et al. (2019), k-NN manifolds with k = 3, through the
  `prdc` package (Naeem et al. 2020, who also give density and coverage).
"""

from __future__ import annotations

import contextlib
import io as _io
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .io import ImageSet

PR_K = 3  # Kynkaanniemi et al. 2019 use k = 3


# -- reconstruction -------------------------------------------------------------------------
def reconstruction_scores(recon: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over images in [0, 1] (torchmetrics, data range 1). The SSIM
    Gaussian window is 11 (sigma 1.5) as in Wang et al. 2004, narrowed to fit tiny images."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    recon, target = recon.float().clamp(0, 1), target.float()
    psnr = peak_signal_noise_ratio(recon, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    side = min(target.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    ssim = structural_similarity_index_measure(
        recon, target, data_range=1.0, kernel_size=kernel, sigma=1.5 * kernel / 11, reduction="none"
    )
    return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}


# -- the feature classifier -----------------------------------------------------------------
class FeatureClassifier(nn.Module):
    """Three conv blocks, a 128-d feature layer, a linear class head. Any input size."""

    def __init__(self, channels: int = 1, n_classes: int = 10, d_feat: int = 128):
        super().__init__()
        self.hparams = {"channels": channels, "n_classes": n_classes, "d_feat": d_feat}

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.convs = nn.ModuleList([block(channels, 16), block(16, 32), block(32, 64)])
        self.feat = nn.Linear(64 * 9, d_feat)
        self.head = nn.Linear(d_feat, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
            if min(x.shape[-2:]) >= 6:
                x = F.max_pool2d(x, 2)
        x = F.adaptive_avg_pool2d(x, 3).flatten(1)
        return F.relu(self.feat(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def classify(model: FeatureClassifier, images: np.ndarray | torch.Tensor, batch: int = 512):
    """(features (N, d), predicted classes (N,)) in eval mode."""
    model.eval()
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    feats, preds = [], []
    for s in range(0, len(x), batch):
        f = model.features(x[s : s + batch])
        feats.append(f)
        preds.append(model.head(f).argmax(-1))
    return torch.cat(feats).numpy().astype(np.float64), torch.cat(preds).numpy()


def train_classifier(
    train: ImageSet,
    val: ImageSet,
    epochs: int = 2,
    batch: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
) -> tuple[FeatureClassifier, dict[str, float]]:
    """Adam with a cosine schedule on the training images; reports val accuracy."""
    if train.labels is None:
        raise ValueError(f"{train.source}: the feature classifier needs class labels")
    torch.manual_seed(seed)
    n_classes = int(max(train.labels.max(), val.labels.max() if val.labels is not None else 0)) + 1
    model = FeatureClassifier(train.images.shape[1], n_classes)
    x = torch.from_numpy(train.images)
    y = torch.from_numpy(train.labels)
    steps = epochs * ((len(x) + batch - 1) // batch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch):
            idx = order[s : s + batch]
            # Small random shifts: the classifier must also judge imperfect generated digits.
            xb = torch.roll(x[idx], tuple(torch.randint(-1, 2, (2,), generator=gen)), (2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    _, pred = classify(model, val.images)
    stats = {"train_s": time.perf_counter() - t, "train_images": float(len(x))}
    if val.labels is not None:
        stats["val_accuracy"] = float((pred == val.labels).mean())
    return model, stats


def save_classifier(model: FeatureClassifier, path: Path, key: dict) -> None:
    from seqmodels.checkpoint import save_atomic

    save_atomic({"state_dict": model.state_dict(), "hparams": model.hparams, "key": key}, path)


def load_classifier(path: str | Path) -> tuple[FeatureClassifier, dict]:
    from seqmodels.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(path))
    if "hparams" not in ckpt or "key" not in ckpt:
        raise ValueError(
            f"{path}: not a feature classifier (written by `seqmodels images classifier`)"
        )
    model = FeatureClassifier(**ckpt["hparams"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt["key"]


# -- distribution scores --------------------------------------------------------------------
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) (Heusel et al. 2017).

    Written here on features because torchmetrics' FrechetInceptionDistance runs its
    extractor inside `update()`; we compute features once and reuse them for the distance,
    precision / recall and the floor."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # dead ReLU features make the product singular
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sa @ sb)
        if not np.isfinite(covmean).all():  # regularise as pytorch-fid does
            eps = np.eye(len(sa)) * 1e-6
            covmean = linalg.sqrtm((sa + eps) @ (sb + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_K) -> dict[str, float]:
    """k-NN precision / recall (and density / coverage) from `prdc`."""
    from prdc import compute_prdc

    with contextlib.redirect_stdout(_io.StringIO()):  # prdc prints the set sizes
        scores = compute_prdc(real.astype(np.float32), fake.astype(np.float32), nearest_k=k)
    return {name: float(v) for name, v in scores.items()}


def generation_scores(
    clf: FeatureClassifier,
    samples: np.ndarray,
    classes: np.ndarray | None,
    reference: np.ndarray,
    test: np.ndarray,
    n_pr: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Scores of generated images against the real training images (`reference`), and the
    same scores for as many real test images (the floor a perfect generator reaches)."""
    rng = np.random.default_rng(seed)
    f_ref, _ = classify(clf, reference)
    f_gen, p_gen = classify(clf, samples)
    n = min(len(samples), len(test))
    f_test, _ = classify(clf, test[rng.permutation(len(test))[:n]])
    pr_ref = f_ref[rng.permutation(len(f_ref))[:n_pr]]
    out: dict[str, float] = {"n_samples": float(len(samples))}
    if classes is not None:
        out["class_accuracy"] = float((p_gen == np.asarray(classes)).mean())
    out["feature_fd"] = frechet_distance(f_gen, f_ref)
    out["feature_fd_floor_test"] = frechet_distance(f_test[:n], f_ref)
    out["feature_fd_ratio"] = out["feature_fd"] / max(out["feature_fd_floor_test"], 1e-12)
    for tag, feats in (("", f_gen), ("floor_test_", f_test)):
        pr = precision_recall(pr_ref, feats[:n_pr])
        out.update({f"{tag}{k}": v for k, v in pr.items()})
    return out
