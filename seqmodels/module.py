"""Lightning modules: `SeqLM` pretrains with any objective; `FinetuneModule` puts
classification / regression heads on a pretrained backbone, several tasks at once."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics.functional as tmf
from torch import nn

from .backbones import BACKBONES, AttentionSpec
from .checkpoint import load_checkpoint
from .heads import TaskHead, pool
from .objectives import ObjectiveOutput, build_objective
from .vocab import Vocab


def init_normal(m: nn.Module, std: float = 0.02) -> None:
    """GPT-2 style initialisation of linear and embedding layers."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=std)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


def _cosine_with_warmup(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


class _Optimised(pl.LightningModule):
    """AdamW (no decay on norms, biases and embeddings), linear warmup, cosine decay."""

    def configure_optimizers(self):
        hp = self.hparams
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = hp.max_steps or int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, _cosine_with_warmup(hp.warmup_steps, total, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class SeqLM(_Optimised):
    """A sequence model over discrete tokens (embedding in, LM head out, cross-entropy) or
    continuous tokens (linear projection in, regression head out, MSE), with optional
    condition vectors projected to prefix embeddings (MatterGPT-style properties).

    vocab_size / d_input / d_cond left unset are read from the datamodule in `setup()`.
    `init_from` loads a pretrained checkpoint's weights (growing the vocabulary when the
    datamodule added task tokens), e.g. for label-as-token finetuning.
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        d_input: int = 0,
        d_cond: int | None = None,
        n_cond_tokens: int = 1,
        backbone: str = "transformer",
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        max_len: int = 512,
        dropout: float = 0.0,
        backbone_args: dict | None = None,
        tie_embeddings: bool = True,
        objective: str | dict = "next_token",
        lr: float = 3e-4,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        max_steps: int | None = None,
        min_lr_ratio: float = 0.1,
        seed: int = 0,
        init_from: str | None = None,
        vocab: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.objective = build_objective(objective)
        self.vocab = Vocab.from_dict(vocab) if vocab else None
        self._gen = torch.Generator().manual_seed(seed)
        self.built = False
        if vocab_size is not None or d_input:
            self._build()

    # -- construction ---------------------------------------------------------------
    def _build(self) -> None:
        hp = self.hparams
        if hp.backbone not in BACKBONES:
            raise ValueError(
                f"unknown backbone {hp.backbone!r}; expected one of {sorted(BACKBONES)}"
            )
        d = hp.d_model
        self.n_cond = hp.n_cond_tokens if hp.d_cond else 0
        if hp.d_input:
            self.proj_in = nn.Linear(hp.d_input, d)
            self.head = nn.Linear(d, hp.d_input)
        else:
            self.embed = nn.Embedding(hp.vocab_size, d)
            self.head = nn.Linear(d, hp.vocab_size, bias=False)
            if hp.tie_embeddings:
                self.head.weight = self.embed.weight
        self.mask_embed = nn.Parameter(torch.zeros(d))
        if hp.d_cond:
            self.cond_proj = nn.Linear(hp.d_cond, self.n_cond * d)
        self.backbone = BACKBONES[hp.backbone](
            d_model=d,
            n_layers=hp.n_layers,
            n_heads=hp.n_heads,
            max_len=hp.max_len + self.n_cond,
            dropout=hp.dropout,
            **(hp.backbone_args or {}),
        )
        # Only the model's own layers: a backbone initialises itself (Mamba's dt_proj
        # and A_log have initialisations of their own).
        for name, m in self.named_children():
            if name != "backbone":
                m.apply(init_normal)
        self.built = True

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if not self.built:
            if dm is None:
                raise ValueError(
                    "SeqLM needs vocab_size or d_input, or a datamodule to read them from"
                )
            if getattr(dm, "vocab", None) is not None:
                self.vocab = dm.vocab
                self.hparams.vocab = dm.vocab.to_dict()
                self.hparams.vocab_size = len(dm.vocab)
            self.hparams.d_input = getattr(dm, "d_input", 0) or self.hparams.d_input
            if self.hparams.d_cond is None:
                self.hparams.d_cond = getattr(dm, "cond_dim", 0)
            self._build()
            if self.hparams.init_from:
                self.load_pretrained(self.hparams.init_from)

    def load_pretrained(self, path: str) -> None:
        """Copy a checkpoint's weights in; vocabularies may only have grown (new tokens)."""
        ckpt = load_checkpoint(path)
        state = ckpt["state_dict"]
        old_vocab = ckpt.get("hyper_parameters", {}).get("vocab")
        if old_vocab and self.vocab is not None:
            old = Vocab.from_dict(old_vocab).tokens
            if self.vocab.tokens[: len(old)] != old:
                raise ValueError(
                    f"{path}: the pretrained vocabulary is not a prefix of this model's; "
                    "add task tokens with Vocab.add_tokens so existing ids keep their rows"
                )
        n_old = state["embed.weight"].shape[0] if "embed.weight" in state else None
        if n_old is not None and n_old != self.embed.num_embeddings:
            target = self.embed.num_embeddings
            self.resize_vocab(n_old)
            self.load_state_dict(state)
            self.resize_vocab(target)
        else:
            self.load_state_dict(state)

    def resize_vocab(self, n: int) -> None:
        """Grow (or shrink) the embedding and LM head to n rows, keeping existing rows."""
        old = self.embed.weight.data
        emb = nn.Embedding(n, old.shape[1]).to(old.device, old.dtype)
        nn.init.normal_(emb.weight, std=0.02)
        k = min(n, old.shape[0])
        emb.weight.data[:k] = old[:k]
        self.embed = emb
        old_head = self.head.weight.data
        self.head = nn.Linear(old.shape[1], n, bias=False).to(old.device, old.dtype)
        if self.hparams.tie_embeddings:
            self.head.weight = self.embed.weight
        else:
            nn.init.normal_(self.head.weight, std=0.02)
            self.head.weight.data[:k] = old_head[:k]
        self.hparams.vocab_size = n

    # -- forward --------------------------------------------------------------------
    def embed_inputs(self, ids=None, x=None, blank=None, cond=None) -> torch.Tensor:
        """Token embeddings (blanks replaced by the mask embedding), with the condition
        prefix in front when `cond` is given."""
        h = self.embed(ids) if x is None else self.proj_in(x)
        if blank is not None:
            h = torch.where(blank.unsqueeze(-1), self.mask_embed.to(h.dtype), h)
        if cond is not None:
            prefix = self.cond_proj(cond.to(h.dtype)).view(h.shape[0], self.n_cond, -1)
            h = torch.cat([prefix, h], dim=1)
        return h

    def hidden(self, ids=None, x=None, cond=None, mask="causal", blank=None, cache=None):
        """Backbone states (B, L, d_model) for the sequence positions (condition prefix
        dropped). With a cache, the condition prefix goes in on the first call only."""
        n = self.n_cond if cache is None or cache.pos == 0 else 0
        if n and cond is None:
            raise ValueError("this model is conditioned: pass cond (B, d_cond)")
        h = self.embed_inputs(ids, x, blank, cond if n else None)
        out = self.backbone(h, AttentionSpec.of(mask).with_prefix(n), cache)
        return out[:, n:]

    def forward(self, ids=None, x=None, cond=None, mask="causal", blank=None, cache=None):
        """Logits (B, L, V) for discrete tokens, regressed tokens (B, L, D) for continuous."""
        return self.head(self.hidden(ids, x, cond, mask, blank, cache))

    def new_cache(self, batch: int):
        if not getattr(self.backbone, "supports_cache", False):
            return None
        p = next(self.parameters())
        return self.backbone.new_cache(batch, p.device, p.dtype)

    # -- losses ---------------------------------------------------------------------
    def part_loss(self, out: ObjectiveOutput) -> torch.Tensor:
        discrete = not out.inputs.is_floating_point()
        kw = {"ids": out.inputs} if discrete else {"x": out.inputs}
        pred = self(**kw, cond=out.cond, mask=out.mask, blank=out.blank)
        if discrete:
            per = F.cross_entropy(
                pred.float().flatten(0, 1), out.targets.flatten(), reduction="none"
            ).view_as(out.weights)
        else:
            per = F.mse_loss(pred.float(), out.targets.float(), reduction="none").mean(-1)
        return (per * out.weights).sum() / out.weights.sum().clamp(min=1)

    def objective_loss(
        self, batch: dict, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict]:
        progress = 0.0
        if self._trainer is not None and self.trainer.max_steps and self.trainer.max_steps > 0:
            progress = self.global_step / self.trainer.max_steps
        parts = self.objective(batch, generator, progress)
        total, named = 0.0, defaultdict(float)
        for out in parts:
            loss = self.part_loss(out)
            total = total + out.scale * loss
            named[out.name] += loss.detach()
        return total, dict(named)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, parts = self.objective_loss(batch, self._gen)
        bs = self._batch_size(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        if len(parts) > 1 or self.objective.name == "mixture":
            for name, v in parts.items():
                self.log(f"train/loss_{name}", v, batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        # Fixed masks every validation: comparable numbers, training RNG untouched.
        self._val_gen = torch.Generator().manual_seed(self.hparams.seed + 1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_test_epoch_start(self) -> None:
        self._val_gen = torch.Generator().manual_seed(self.hparams.seed + 1)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_step(self, batch: dict, split: str) -> None:
        loss, parts = self.objective_loss(batch, self._val_gen)
        bs = self._batch_size(batch)
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        for name, v in parts.items():
            self.log(f"{split}/loss_{name}", v, batch_size=bs, sync_dist=True)

    @staticmethod
    def _batch_size(batch: dict) -> int:
        return (batch["ids"] if "ids" in batch else batch["x"]).shape[0]

    @staticmethod
    def hparams_for_load(ckpt: dict) -> dict:
        """Constructor arguments that rebuild this model from a checkpoint's own weights."""
        return {**ckpt["hyper_parameters"], "init_from": None}

    # -- exact resume -----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["seqmodels_rng"] = {
            "objective": self._gen.get_state(),
            "torch": torch.get_rng_state(),
        }
        checkpoint["seqmodels_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rng = checkpoint.get("seqmodels_rng")
        if rng:
            self._gen.set_state(rng["objective"])
            # Applied at the first training batch: Lightning may draw random numbers
            # between loading and training (sanity checks, loaders).
            self._pending_rng = rng["torch"]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        pending = getattr(self, "_pending_rng", None)
        if pending is not None:
            torch.set_rng_state(pending)
            self._pending_rng = None


def _make_lm(kwargs: dict) -> SeqLM:
    # Built outside FinetuneModule.__init__: Lightning's save_hyperparameters walks up the
    # constructor frames and would merge the finetuner's arguments into the backbone's.
    return SeqLM(**kwargs)


class FinetuneModule(_Optimised):
    """Heads on a (pretrained or fresh) SeqLM backbone, one per task, trained jointly.

    tasks: [{"name": "promoter", "kind": "classification", "n_outputs": 2}, ...];
    batches carry `task` (B,) indices into this list and `label` (B,) or (B, K).
    Logs per-task metrics: accuracy, MCC, F1 (classification); MAE, RMSE (regression).
    """

    def __init__(
        self,
        tasks: list[dict],
        pretrained: str | None = None,
        backbone_config: dict | None = None,
        pooling: str = "mean",
        freeze_backbone: bool = False,
        head_dropout: float = 0.1,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 50,
        max_steps: int | None = None,
        min_lr_ratio: float = 0.1,
    ):
        super().__init__()
        self.save_hyperparameters()
        if not tasks:
            raise ValueError("FinetuneModule needs at least one task")
        for t in tasks:
            if t.get("kind") not in ("classification", "regression") or "name" not in t:
                raise ValueError(f"task {t!r}: needs a name and kind classification|regression")
        if pretrained:
            ckpt = load_checkpoint(pretrained)
            self.lm = _make_lm(SeqLM.hparams_for_load(ckpt))
            self.lm.load_state_dict(ckpt["state_dict"])
        else:
            self.lm = _make_lm(backbone_config or {})
        self.lm.hparams.init_from = None  # the weights are in this module's state from now on
        self.heads = nn.ModuleDict()
        self._outputs: dict = defaultdict(list)
        if self.lm.built:
            self._build_heads()

    def _build_heads(self) -> None:
        d = self.lm.hparams.d_model
        for t in self.hparams.tasks:
            n = t.get("n_outputs", 2 if t["kind"] == "classification" else 1)
            self.heads[t["name"]] = TaskHead(d, n, dropout=self.hparams.head_dropout)
        if self.hparams.freeze_backbone:
            self.lm.requires_grad_(False)

    def setup(self, stage: str) -> None:
        if not self.lm.built:  # a fresh backbone sized from the datamodule
            self.lm._trainer = self._trainer
            self.lm.setup(stage)
            self._build_heads()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Per-task outputs for the rows of that task: {name: (rows, outputs)}."""
        kw = {"ids": batch["ids"]} if "ids" in batch else {"x": batch["x"]}
        pad = batch.get("pad")
        mask = AttentionSpec(
            "bidirectional" if self.hparams.pooling == "mean" else "causal", pad=pad
        )
        pooled = pool(
            self.lm.hidden(**kw, cond=batch.get("cond"), mask=mask), pad, self.hparams.pooling
        )
        task = batch.get("task")
        outs = {}
        for i, t in enumerate(self.hparams.tasks):
            rows = (
                torch.arange(pooled.shape[0], device=pooled.device)
                if task is None
                else (task == i).nonzero().flatten()
            )
            if len(rows):
                outs[t["name"]] = (rows, self.heads[t["name"]](pooled[rows]))
        return outs

    def _losses(self, batch: dict, split: str | None) -> torch.Tensor:
        total = 0.0
        kinds = {t["name"]: t["kind"] for t in self.hparams.tasks}
        for name, (rows, out) in self(batch).items():
            y = batch["label"][rows]
            if kinds[name] == "classification":
                loss = F.cross_entropy(out.float(), y.long())
            else:
                loss = F.mse_loss(out.float().view(y.shape[0], -1), y.float().view(y.shape[0], -1))
            total = total + loss * len(rows) / batch["label"].shape[0]
            if split:
                self._outputs[(split, name)].append((out.detach().float().cpu(), y.cpu()))
        return total

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._losses(batch, None)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["label"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._losses(batch, "val")
        self.log("val/loss", loss, prog_bar=True, batch_size=batch["label"].shape[0])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss = self._losses(batch, "test")
        self.log("test/loss", loss, batch_size=batch["label"].shape[0])

    def on_validation_epoch_end(self) -> None:
        self._log_task_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_task_metrics("test")

    def task_metrics(self, split: str) -> dict[str, float]:
        """Metrics per task from the outputs gathered this epoch, and macro means."""
        metrics: dict[str, float] = {}
        macro = defaultdict(list)
        for t in self.hparams.tasks:
            got = self._outputs.pop((split, t["name"]), None)
            if not got:
                continue
            out = torch.cat([o for o, _ in got])
            y = torch.cat([y for _, y in got])
            if t["kind"] == "classification":
                n = out.shape[-1]
                pred = out.argmax(-1)
                task = "binary" if n == 2 else "multiclass"
                kw = {"num_classes": n} if n > 2 else {}
                m = {
                    "acc": tmf.accuracy(pred, y.long(), task=task, **kw),
                    "mcc": tmf.matthews_corrcoef(pred, y.long(), task=task, **kw),
                    "f1": tmf.f1_score(pred, y.long(), task=task, average="macro", **kw)
                    if n > 2
                    else tmf.f1_score(pred, y.long(), task=task),
                }
            else:
                err = out.view(y.shape[0], -1) - y.float().view(y.shape[0], -1)
                m = {"mae": err.abs().mean(), "rmse": err.pow(2).mean().sqrt()}
            for k, v in m.items():
                metrics[f"{split}/{t['name']}/{k}"] = float(v)
                macro[k].append(float(v))
        for k, vs in macro.items():
            metrics[f"{split}/macro/{k}"] = sum(vs) / len(vs)
        return metrics

    def _log_task_metrics(self, split: str) -> None:
        for k, v in self.task_metrics(split).items():
            self.log(k, v, sync_dist=True)

    @staticmethod
    def hparams_for_load(ckpt: dict) -> dict:
        return {
            **ckpt["hyper_parameters"],
            "pretrained": None,
            "backbone_config": ckpt["seqmodels_backbone"],
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["seqmodels_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        # The backbone's own hyperparameters, so the checkpoint rebuilds without `pretrained`.
        checkpoint["seqmodels_backbone"] = dict(self.lm.hparams)
