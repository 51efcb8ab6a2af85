"""PSNR / SSIM against known values, Frechet distance of Gaussians, precision / recall,
and the feature classifier learning digits."""

import numpy as np
import torch

from domains.images.metrics import (
    classify,
    frechet_distance,
    generation_scores,
    precision_recall,
    reconstruction_scores,
    train_classifier,
)
from domains.images.splits import load_split


def test_psnr_matches_its_definition():
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # not the global seed
    y = (x + 0.1).clamp(0, 1)
    mse = ((x - y) ** 2).flatten(1).mean(1)
    want = (10 * torch.log10(1 / mse)).mean().item()
    got = reconstruction_scores(y, x)
    assert abs(got["psnr"] - want) < 1e-3
    same = reconstruction_scores(x[:, :, :8, :8], x[:, :, :8, :8])  # tiny images fit a window
    assert same["ssim"] > 0.999
    assert reconstruction_scores(torch.rand_like(x), x)["ssim"] < 0.2


def test_frechet_distance_of_shifted_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    b = rng.normal(size=(4000, 3)) + np.array([2.0, 0, 0])
    assert abs(frechet_distance(a, b) - 4.0) < 0.2
    assert frechet_distance(a, a) < 1e-6
    c = rng.normal(size=(4000, 3)) * 2  # covariance 4 I: trace term 3 * (1 + 4 - 2 * 2) = 3
    assert abs(frechet_distance(a, c) - 3.0) < 0.3


def test_precision_recall_sees_mode_dropping():
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 10])
    half = rng.normal(size=(300, 2))  # only one of the two modes
    pr = precision_recall(real, half)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.6


def test_classifier_learns_digits_and_scores_real_above_noise():
    train, val = load_split("digits", "train"), load_split("digits", "val")
    model, stats = train_classifier(train, val, epochs=6, batch=64, lr=5e-3)
    assert stats["val_accuracy"] > 0.85
    test = load_split("digits", "test")
    _, pred = classify(model, test.images)
    assert (pred == test.labels).mean() > 0.85
    real = generation_scores(model, test.images, test.labels, train.images, val.images)
    noise = np.random.default_rng(0).random(test.images.shape).astype(np.float32)
    fake = generation_scores(model, noise, test.labels, train.images, val.images)
    assert real["class_accuracy"] > 0.85 and fake["class_accuracy"] < 0.3
    assert fake["feature_fd"] > 10 * real["feature_fd"]
    assert real["precision"] > fake["precision"]
