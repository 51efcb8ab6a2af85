"""TokenDataModule: seeded splits, padding or packing, length bucketing, and a resumable
sampler so a checkpoint restores the exact data position."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .vocab import Vocab

SPLITS = ("train", "val", "test")


class ListDataset(Dataset):
    def __init__(self, examples: Sequence[dict]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


class ResumableBatchSampler(Sampler[list[int]]):
    """Batches of indices, reshuffled per epoch from (seed, epoch), sharded across ranks.

    `skip` batches are dropped at the start of the current epoch: that is how a resumed
    run continues at the batch after the checkpoint. With `bucket`, batches hold examples
    of similar length (less padding), in a seeded random order of batches.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        lengths: Sequence[int] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.lengths = lengths
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0
        # Lightning calls set_epoch on `batch_sampler.sampler` at every epoch start.
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = (
            torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        )
        if self.lengths is not None:
            # Sort within windows of 50 batches, so batches are length-homogeneous but the
            # data order stays random.
            w = self.batch_size * 50
            order = [
                i
                for s in range(0, len(order), w)
                for i in sorted(order[s : s + w], key=lambda i: self.lengths[i])
            ]
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.lengths is not None and self.shuffle:
            perm = torch.randperm(len(batches), generator=g).tolist()
            batches = [batches[i] for i in perm]
        # Every rank gets the same number of batches (DDP steps in lockstep).
        per_rank = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank :: self.world_size][:per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()[self.skip :]

    def __len__(self) -> int:
        full = self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)
        return full // self.world_size if self.world_size > 1 else full


class ResumableLoader(DataLoader):
    """A DataLoader Lightning saves and restores (it implements state_dict): the epoch and
    the number of batches the training loop has processed in it."""

    def __init__(self, *args, progress=lambda: 0, **kwargs):
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict:
        return {"epoch": self.batch_sampler.epoch, "consumed": int(self._progress())}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.epoch = state["epoch"]
        self.batch_sampler.skip = state["consumed"]


def pad_sequences(seqs: Sequence[torch.Tensor], value: float | int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=value)


def collate(examples: Sequence[dict], pad_id: int = 0) -> dict:
    """Right-pad a list of examples into a batch dict (see docs/ARCHITECTURE.md)."""
    batch: dict = {}
    if "ids" in examples[0]:
        ids = [torch.as_tensor(e["ids"], dtype=torch.long) for e in examples]
        batch["ids"] = pad_sequences(ids, pad_id)
        lengths = [len(t) for t in ids]
    else:
        xs = [torch.as_tensor(e["x"], dtype=torch.float32) for e in examples]
        batch["x"] = pad_sequences(xs, 0.0)
        lengths = [len(t) for t in xs]
    L = max(lengths)
    batch["pad"] = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    if "loss_mask" in examples[0]:
        lm = [torch.as_tensor(e["loss_mask"], dtype=torch.bool) for e in examples]
        batch["loss_mask"] = pad_sequences(lm, False)
    if "cond" in examples[0]:
        batch["cond"] = torch.tensor([e["cond"] for e in examples], dtype=torch.float32)
    if "task" in examples[0]:
        batch["task"] = torch.tensor([e["task"] for e in examples], dtype=torch.long)
    if "label" in examples[0]:
        labels = [e["label"] for e in examples]
        if isinstance(labels[0], list | tuple) and len({len(y) for y in labels}) > 1:
            # Per-position labels (dense tasks) of sequences of different lengths.
            batch["label"] = pad_sequences([torch.as_tensor(y) for y in labels], 0)
        else:
            batch["label"] = torch.tensor(labels)
    if "label_mask" in examples[0]:
        lm = [torch.as_tensor(e["label_mask"]) for e in examples]
        batch["label_mask"] = pad_sequences(lm, 0)
    return batch


def pack_examples(examples: Sequence[dict], max_len: int, eos_id: int) -> list[dict]:
    """Concatenate token sequences (eos between them) and cut into max_len chunks: no
    padding for pretraining. Only for examples with `ids` and no per-example fields."""
    stream: list[int] = []
    for e in examples:
        stream.extend(list(e["ids"]) + [eos_id])
    return [{"ids": stream[s : s + max_len]} for s in range(0, len(stream) - 1, max_len)]


class TokenDataModule(pl.LightningDataModule):
    """Base datamodule: a domain subclass implements `build()` returning example dicts and
    sets `self.vocab` (or leaves it None for continuous tokens)."""

    def __init__(
        self,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        max_len: int | None = None,
        pack: bool = False,
        bucket: bool = False,
        num_workers: int = 0,
    ):
        super().__init__()
        if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
            raise ValueError("val_fraction and test_fraction must be in [0, 1)")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.seed, self.max_len = seed, max_len
        self.pack, self.bucket, self.num_workers = pack, bucket, num_workers
        self.vocab: Vocab | None = None
        self.splits: dict[str, list[dict]] | None = None
        self._loader_state: dict | None = None

    # -- what a domain provides -----------------------------------------------------------
    def build(self) -> list[dict]:
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    @property
    def cond_dim(self) -> int:
        self._ensure()
        first = self.splits["train"][0] if self.splits["train"] else {}
        return len(first["cond"]) if "cond" in first else 0

    @property
    def d_input(self) -> int:
        self._ensure()
        first = self.splits["train"][0] if self.splits["train"] else {}
        return int(torch.as_tensor(first["x"]).shape[-1]) if "x" in first else 0

    @property
    def vocab_size(self) -> int:
        self._ensure()
        return len(self.vocab) if self.vocab is not None else 0

    # -- splits ---------------------------------------------------------------------------
    def _ensure(self) -> None:
        if self.splits is None:
            self.setup("fit")

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        examples = self.build()
        if not examples:
            raise ValueError(f"{type(self).__name__}.build() returned no examples")
        if self.max_len:
            examples = [self._truncate(e) for e in examples]
        self.splits = self.split(examples)
        if self.pack:
            eos = self.vocab.eos_id if self.vocab is not None else 2
            self.splits = {
                k: pack_examples(v, self.max_len or 512, eos) if v else v
                for k, v in self.splits.items()
            }

    def _truncate(self, e: dict) -> dict:
        key = "ids" if "ids" in e else "x"
        if len(e[key]) <= self.max_len:
            return e
        e = dict(e)
        e[key] = e[key][: self.max_len]
        if "loss_mask" in e:
            e["loss_mask"] = e["loss_mask"][: self.max_len]
        return e

    def split(self, examples: list[dict]) -> dict[str, list[dict]]:
        """Examples with a `split` key keep it; the rest are split by a seeded shuffle."""
        out: dict[str, list[dict]] = {s: [] for s in SPLITS}
        free = []
        for e in examples:
            s = e.get("split")
            if s is None:
                free.append(e)
            elif s in out:
                out[s].append(e)
            else:
                raise ValueError(f"example split must be one of {SPLITS}, got {s!r}")
        perm = torch.randperm(len(free), generator=torch.Generator().manual_seed(self.seed))
        n_val = round(len(free) * self.val_fraction)
        n_test = round(len(free) * self.test_fraction)
        for rank, i in enumerate(perm.tolist()):
            s = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            out[s].append(free[i])
        if not out["train"]:
            raise ValueError("the training split is empty")
        return out

    # -- loaders --------------------------------------------------------------------------
    def collate(self, examples: Sequence[dict]) -> dict:
        return collate(examples, self.vocab.pad_id if self.vocab is not None else 0)

    def _lengths(self, data: list[dict]) -> list[int] | None:
        if not self.bucket:
            return None
        return [len(e["ids"] if "ids" in e else e["x"]) for e in data]

    def train_dataloader(self) -> DataLoader:
        self._ensure()
        data = self.splits["train"]
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = ResumableBatchSampler(
            len(data), self.batch_size, self.seed, True, False, self._lengths(data), rank, world
        )

        def progress() -> int:
            t = self.trainer
            return t.fit_loop.epoch_loop.batch_progress.current.processed if t else 0

        return ResumableLoader(
            ListDataset(data),
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            # Its own generator: worker seeding must not draw from the global RNG, or a
            # resumed run would see different random numbers than an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
            progress=progress,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        self._ensure()
        data = self.splits[split]
        return DataLoader(
            ListDataset(data),
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader | list:
        self._ensure()
        return self._eval_loader("val") if self.splits["val"] else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


class ExamplesDataModule(TokenDataModule):
    """A TokenDataModule over examples already in memory (tests, notebooks)."""

    def __init__(self, examples: list[dict], vocab: Vocab | None = None, **kwargs):
        super().__init__(**kwargs)
        self._examples = examples
        self.vocab = vocab

    def build(self) -> list[dict]:
        return self._examples
