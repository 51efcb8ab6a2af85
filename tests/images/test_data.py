"""Fixed splits and the tokenizer's datamodule."""

import numpy as np
import torch

from domains.images.data import ImageDataModule
from domains.images.splits import load_split


def test_digits_splits_are_fixed_and_disjoint():
    parts = {s: load_split("digits", s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [1258, 180, 359]
    names = [set(parts[s].names) for s in parts]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    again = load_split("digits", "test")
    assert again.names == parts["test"].names and np.array_equal(again.images, parts["test"].images)


def test_datamodule_batches_images_labels_and_one_hot_classes():
    dm = ImageDataModule(source="digits", size=16, batch_size=8, limit_train=40)
    dm.setup("fit")
    assert len(dm.splits["train"]) == 40 and len(dm.splits["test"]) == 359
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 16, 16)
    assert torch.equal(batch["cond"].argmax(1), batch["label"])
    assert torch.all(batch["cond"].sum(1) == 1)
