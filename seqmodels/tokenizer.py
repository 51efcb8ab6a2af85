"""The learned-tokenizer contract, and the datamodule that feeds its tokens to an AR model.

    object -> Tokenizer.encode -> ids per scale (concatenated, coarse first) | 1-D ids
    ids (+ condition) -> AR model (next-scale or next-token) -> sampled ids
    sampled ids -> Tokenizer.decode -> object

A `Tokenizer` is an ordinary LightningModule trained by a `seqmodels fit` stage (exact
resume through `ExactResume`; it loads with `seqmodels.checkpoint.load_module` and
exports like any model). A domain subclass implements:

- `loss(batch, generator) -> (loss, logs, indices)`: the training objective, e.g.
  reconstruction + the quantiser's aux loss; `indices` feed the codebook metrics;
- `encode(batch) -> ids` (B, L) long, codes in [0, codebook_size);
- `decode(ids) -> reconstruction`; for scales, any prefix of whole scales decodes
  (coarse to fine);
- attributes `codebook_size`, `scales` (tokens per scale, or None for a 1-D sequence) and,
  for scales, `quantizer` (a `MultiScaleQuantizer`: indices -> next-scale inputs).

`TokenizedDataModule(tokenizer=CKPT, source={class_path, init_args})` encodes the source
datamodule's splits once, caches them beside the checkpoint (the key hashes the
checkpoint's bytes and the source examples, so a retrained tokenizer or changed data
re-encodes), and yields examples for the AR stage:

- layout "scales": `ids` = codes (vocabulary = the codebook, no specials), `x` = the
  quantiser's next-scale inputs (continuous parents), `cond` when the source has one;
  train with objective `{"name": "next_scale", "scale_sizes": [...]}`.
- layout "sequence": `ids` = [bos] + (code + CODE_OFFSET) + [eos] over a `Vocab` whose
  tokens are the codes (`codes_to_ids` / `ids_to_codes` convert); train with next_token.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .checkpoint import load_module, save_atomic
from .data import TokenDataModule, pad_sequences
from .quantizers import codebook_metrics
from .training import _Optimised
from .vocab import SPECIALS, Vocab

CODE_OFFSET = len(SPECIALS)  # layout "sequence": code c has vocabulary id c + CODE_OFFSET
CACHE_VERSION = 1


class Tokenizer(_Optimised):
    """Base class of learned tokenizers (see the module docstring for the contract).

    Its constructor takes the optimisation settings; a subclass passes its own
    arguments and forwards the rest: `def __init__(self, width=64, **kwargs):
    super().__init__(**kwargs)`. All of them become hyperparameters.
    """

    codebook_size: int
    scales: list[int] | None = None

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 100,
        max_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()  # collects the subclass's arguments too
        self._gen = torch.Generator().manual_seed(seed)

    # -- what a domain implements -------------------------------------------------------
    def loss(
        self, batch: dict, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement loss()")

    def encode(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement encode()")

    def decode(self, ids: torch.Tensor) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement decode()")

    # -- next-scale inputs (the quantiser owns them) ----------------------------------------
    def next_scale_inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs (B, L, D) for ids of every scale."""
        return self.quantizer.next_scale_inputs(ids)

    def next_scale_input(self, ids: torch.Tensor) -> torch.Tensor:
        """The input (B, n_k, D) of scale k, given the ids of scales < k."""
        return self.quantizer.next_scale_input(ids)

    # -- training -----------------------------------------------------------------------
    def _step(self, batch: dict, split: str, generator) -> torch.Tensor:
        loss, logs, indices = self.loss(batch, generator)
        bs = indices.shape[0]
        sync = split != "train"
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=sync)
        for k, v in logs.items():
            self.log(f"{split}/{k}", v, batch_size=bs, sync_dist=sync)
        for k, v in codebook_metrics(indices.detach(), self.codebook_size).items():
            self.log(f"{split}/codebook_{k}", v, batch_size=bs, sync_dist=sync)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self._gen)

    def on_validation_epoch_start(self) -> None:
        self._val_gen = torch.Generator().manual_seed(self.hparams.seed + 1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val", self._val_gen)

    def on_test_epoch_start(self) -> None:
        self._val_gen = torch.Generator().manual_seed(self.hparams.seed + 1)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test", self._val_gen)

    def resume_generators(self) -> dict[str, torch.Generator]:
        return {"tokenizer": self._gen}


# ------------------------------------------------------------------ code <-> id (sequence layout)


def code_vocab(codebook_size: int) -> Vocab:
    """Specials first, then one token per code ("0", "1", ...): code c has id c + CODE_OFFSET."""
    return Vocab(str(c) for c in range(codebook_size))


def codes_to_ids(codes: torch.Tensor) -> torch.Tensor:
    return codes + CODE_OFFSET


def ids_to_codes(ids: torch.Tensor) -> torch.Tensor:
    if (ids < CODE_OFFSET).any():
        raise ValueError("ids contain special tokens; strip bos / eos / pad first")
    return ids - CODE_OFFSET


# ------------------------------------------------------------------ the tokenized datamodule


def _instantiate(spec: dict | TokenDataModule) -> TokenDataModule:
    if isinstance(spec, TokenDataModule):
        return spec
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError("source must be a TokenDataModule or {class_path, init_args}")
    module, _, name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"source class {spec['class_path']!r} cannot be imported: {err}") from err
    dm = cls(**(spec.get("init_args") or {}))
    if not isinstance(dm, TokenDataModule):
        raise ValueError(f"source {spec['class_path']} is not a TokenDataModule")
    return dm


def _feed(h: Any, value: Any) -> None:
    """Hash a value of an example (tensors, arrays, numbers, strings, nested lists/dicts)."""
    if isinstance(value, dict):
        for k in sorted(value):
            h.update(str(k).encode())
            _feed(h, value[k])
    elif torch.is_tensor(value) or hasattr(value, "__array__"):
        t = torch.as_tensor(value).detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for v in value:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(repr(value).encode())


def data_hash(splits: dict[str, list[dict]]) -> str:
    """sha256 over every example of every split (keys, values, order)."""
    h = hashlib.sha256()
    for split in sorted(splits):
        h.update(split.encode())
        for e in splits[split]:
            _feed(h, e)
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TokenizedDataModule(TokenDataModule):
    """Token sequences of a source datamodule's examples, encoded by a trained tokenizer.

    Args:
        tokenizer: path of a Tokenizer checkpoint (a `seqmodels fit` stage's last.ckpt).
        source: the datamodule whose examples are encoded, {class_path, init_args} (or an
            instance); its train / val / test splits are kept as they are.
        layout: "scales" (next-scale: codes + continuous next-scale inputs `x`) or
            "sequence" (next-token: bos + codes + eos over `code_vocab`).
        cache_dir: where encoded data sets are kept (default: `tokenized/` beside the
            checkpoint). The file name is a hash of the checkpoint bytes, the source
            examples and the layout: any change re-encodes.
        encode_batch_size: examples per encode call.
        keep: example keys copied from the source (default: cond, label).
        **kwargs: TokenDataModule's (batch_size, seed, ...); the splits come from the source.
    """

    def __init__(
        self,
        tokenizer: str,
        source: dict | TokenDataModule,
        layout: str = "scales",
        cache_dir: str | None = None,
        encode_batch_size: int = 256,
        keep: Sequence[str] = ("cond", "label"),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if layout not in ("scales", "sequence"):
            raise ValueError(f"layout must be 'scales' or 'sequence', not {layout!r}")
        self.tokenizer_path = Path(tokenizer)
        self.source = _instantiate(source)
        self.layout = layout
        self.cache_dir = Path(cache_dir) if cache_dir else self.tokenizer_path.parent / "tokenized"
        self.encode_batch_size = encode_batch_size
        self.keep = tuple(keep)
        self.codebook_size = 0
        self.scales: list[int] | None = None
        self.cache_path: Path | None = None

    @property
    def vocab_size(self) -> int:
        """The AR model's vocabulary: the codebook ("scales") or code_vocab ("sequence")."""
        self._ensure()
        return len(self.vocab) if self.vocab is not None else self.codebook_size

    def collate(self, examples: Sequence[dict]) -> dict:
        """The base batch (ids, pad, cond, ...) plus `x`, the next-scale inputs, beside ids."""
        batch = super().collate(examples)
        if "x" in examples[0] and "ids" in examples[0]:
            xs = [torch.as_tensor(e["x"], dtype=torch.float32) for e in examples]
            batch["x"] = pad_sequences(xs, 0.0)
        return batch

    def cache_key(self) -> str:
        self.source.setup("fit")
        h = hashlib.sha256()
        h.update(f"v{CACHE_VERSION}:{self.layout}:".encode())
        h.update(file_hash(self.tokenizer_path).encode())
        h.update(data_hash(self.source.splits).encode())
        return h.hexdigest()[:24]

    def build(self) -> list[dict]:
        if not self.tokenizer_path.is_file():
            raise FileNotFoundError(f"{self.tokenizer_path}: tokenizer checkpoint not found")
        self.cache_path = self.cache_dir / f"{self.cache_key()}.pt"
        if self.cache_path.is_file():
            cached = torch.load(self.cache_path, weights_only=True)
            examples = cached["examples"]
            self.codebook_size, self.scales = cached["codebook_size"], cached["scales"]
        else:
            examples = self._encode_all()
            save_atomic(
                {"examples": examples, "codebook_size": self.codebook_size, "scales": self.scales},
                self.cache_path,
            )
        if self.layout == "sequence":
            self.vocab = code_vocab(self.codebook_size)
        return examples

    @torch.no_grad()
    def _encode_all(self) -> list[dict]:
        tok = load_module(self.tokenizer_path)
        if not isinstance(tok, Tokenizer):
            raise ValueError(f"{self.tokenizer_path}: {type(tok).__name__} is not a Tokenizer")
        self.codebook_size = int(tok.codebook_size)
        self.scales = list(tok.scales) if tok.scales else None
        if self.layout == "scales" and not self.scales:
            raise ValueError(
                f"{self.tokenizer_path}: layout 'scales' needs a multi-scale tokenizer"
            )
        examples = []
        total = sum(len(v) for v in self.source.splits.values())
        with tqdm(total=total, desc="encode", unit="ex") as bar:
            for split, data in self.source.splits.items():
                for s in range(0, len(data), self.encode_batch_size):
                    chunk = data[s : s + self.encode_batch_size]
                    batch = self.source.collate(chunk)
                    ids = tok.encode(batch).long()
                    x = tok.next_scale_inputs(ids) if self.layout == "scales" else None
                    for i, e in enumerate(chunk):
                        ex: dict = {"split": split}
                        if self.layout == "scales":
                            ex["ids"] = ids[i].tolist()
                            ex["x"] = x[i].float().clone()
                        else:
                            ex["ids"] = [Vocab.bos_id, *codes_to_ids(ids[i]).tolist(), Vocab.eos_id]
                        ex.update({k: e[k] for k in self.keep if k in e})
                        examples.append(ex)
                    bar.update(len(chunk))
        return examples
