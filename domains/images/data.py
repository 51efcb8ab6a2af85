"""Datamodules: images for a tokenizer's `fit` stage, and their tokens for the AR stage.

`ImageDataModule` yields `{"image": (C, H, W) float in [0, 1], "label", "cond", "split"}`
from the fixed splits of `splits.py`; `cond` is the class one-hot (length `n_classes`), so
the tokenized data set carries the class condition to the AR model.
`ImageTokensDataModule` is the core `TokenizedDataModule` (layout "sequence": bos, the
tokenizer's codes, eos) over an `ImageDataModule`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from seqmodels.data import TokenDataModule
from seqmodels.tokenizer import TokenizedDataModule

from .splits import load_split


class ImageDataModule(TokenDataModule):
    """Images of one source (`digits`, `mnist`, a folder, an npz, `skimage:NAME`).

    size / mode / crop shape every image (see io.py); limit_train caps the training split
    (the first images of it) for quick runs; n_classes sizes the one-hot condition.
    """

    def __init__(
        self,
        source: str = "digits",
        size: int | None = None,
        mode: str | None = "L",
        crop: int | None = None,
        limit_train: int | None = None,
        limit_eval: int | None = None,
        n_classes: int = 10,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.source, self.size, self.mode, self.crop = source, size, mode, crop
        self.limit_train, self.limit_eval, self.n_classes = limit_train, limit_eval, n_classes

    def build(self) -> list[dict]:
        examples = []
        for split in ("train", "val", "test"):
            limit = self.limit_train if split == "train" else self.limit_eval
            data = load_split(self.source, split, self.size, self.mode, self.crop, limit)
            data.report_notes()
            images = torch.from_numpy(data.images)
            for i in range(len(data)):
                e: dict = {"image": images[i], "split": split}
                if data.labels is not None:
                    y = int(data.labels[i])
                    e["label"] = y
                    e["cond"] = [float(c == y) for c in range(self.n_classes)]
                examples.append(e)
        return examples

    def collate(self, examples: Sequence[dict]) -> dict:
        batch = {"image": torch.stack([e["image"] for e in examples])}
        if "label" in examples[0]:
            batch["label"] = torch.tensor([e["label"] for e in examples])
            batch["cond"] = torch.tensor([e["cond"] for e in examples], dtype=torch.float32)
        return batch


class ImageTokensDataModule(TokenizedDataModule):
    """bos + image codes + eos per image, with the class condition; see TokenizedDataModule.
    (Classifier-free guidance needs the AR model trained with `cond_dropout` > 0.)"""

    def __init__(self, tokenizer: str, source: dict, layout: str = "sequence", **kwargs):
        super().__init__(tokenizer, source, layout=layout, **kwargs)
