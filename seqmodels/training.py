"""Lightning modules that train a `SeqModel`: `SeqLM` pretrains with any objective;
`FinetuneModule` puts pooled or per-token (dense) heads on a pretrained backbone, several
tasks at once. Both (and every other LightningModule of the project) resume exactly
through `ExactResume`."""

from __future__ import annotations

import inspect
import math
import statistics
import time
from collections import defaultdict
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics.functional as tmf
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from .backbones import AttentionSpec
from .checkpoint import load_checkpoint, upgrade_checkpoint
from .heads import POOLINGS, build_head, pool
from .model import ModelConfig, SeqModel
from .objectives import ObjectiveOutput, build_objective
from .vocab import Vocab


# ------------------------------------------------------------------------- exact resume
def _rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ExactResume(pl.LightningModule):
    """Saves and restores every random state training draws from, per rank: torch's CPU
    RNG, the CUDA RNGs (when CUDA is in use) and the module's own generators
    (`resume_generators()`), so a resumed run draws the same numbers as an uninterrupted
    one. Also records the class (`seqmodels_class`) so `load_module` can rebuild it.

    Under DDP only rank 0 writes the checkpoint, so the states of all ranks are gathered
    into it (`on_save_checkpoint` runs on every rank). A checkpoint from a different
    number of ranks restores rank 0's state on rank 0 and leaves the other ranks seeded.
    """

    def resume_generators(self) -> dict[str, torch.Generator]:
        """The module's own generators to save and restore, by name."""
        return {}

    def _rng_state(self) -> dict:
        state = {
            "torch": torch.get_rng_state(),
            "generators": {k: g.get_state() for k, g in self.resume_generators().items()},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        local = self._rng_state()
        rank, world = _rank()
        per_rank = [local]
        if world > 1:
            per_rank = [None] * world
            torch.distributed.all_gather_object(per_rank, local)
            # Pickled through the backend (gloo: CPU; nccl: this rank's device): back to CPU.
            per_rank = [
                {**s, "torch": s["torch"].cpu(), "cuda": [c.cpu() for c in s.get("cuda", [])]}
                for s in per_rank
            ]
        checkpoint["seqmodels_rng"] = {"per_rank": per_rank}
        checkpoint["seqmodels_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint)  # checkpoints read by Lightning's own IO, too
        rng = checkpoint.get("seqmodels_rng")
        if not rng:
            return
        if "per_rank" not in rng:  # the earlier format: one CPU state and the objective's
            rng = {
                "per_rank": [{"torch": rng["torch"], "generators": {"objective": rng["objective"]}}]
            }
        rank, _ = _rank()
        states = rng["per_rank"]
        if rank >= len(states):
            return
        state = states[rank]
        gens = self.resume_generators()
        for name, s in state.get("generators", {}).items():
            if name in gens:
                gens[name].set_state(s)
        # Applied at the first training batch: Lightning may draw random numbers between
        # loading and training (sanity checks, loaders).
        self._pending_rng = state

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        state = getattr(self, "_pending_rng", None)
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        cuda = state.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        self._pending_rng = None


# ----------------------------------------------------------------------- optimisation
def _cosine_with_warmup(warmup: int, total: int, min_ratio: float, hold: int = 0):
    """Linear warmup, then cosine decay to min_ratio; zero for the first `hold` steps
    (a frozen backbone) after which its own warmup starts."""

    def factor(step: int) -> float:
        if step < hold:
            return 0.0
        step -= hold
        if step < warmup:
            return (step + 1) / max(1, warmup)
        t = min(1.0, (step - warmup) / max(1, total - hold - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def _decay_split(named: list[tuple[str, nn.Parameter]]) -> tuple[list, list]:
    """AdamW groups: no weight decay on norms, biases, embeddings and parameters marked
    `_no_weight_decay` (mamba-ssm's mark, on Mamba's A_log and D)."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            exempt = p.dim() < 2 or "embed" in name or getattr(p, "_no_weight_decay", False)
            (no_decay if exempt else decay).append(p)
    return decay, no_decay


def _adamw_kernel(groups: list[dict]) -> dict:
    """torch's fused AdamW (one kernel over all parameters) where it has one for every
    parameter's device and dtype; its per-parameter loop, torch's default on CPU, costs
    several times more per step on small models. Same update either way."""
    params = [p for g in groups for p in g["params"]]
    fused_devices = ("cpu", "cuda", "mps", "xpu")
    if params and all(p.device.type in fused_devices and p.is_floating_point() for p in params):
        return {"fused": True}
    return {}


class _Optimised(ExactResume):
    """AdamW (no decay on norms, biases and embeddings), linear warmup, cosine decay."""

    def param_groups(self) -> list[dict]:
        """Optimiser groups; each may set its own lr and `hold` (steps at lr 0)."""
        decay, no_decay = _decay_split(list(self.named_parameters()))
        return [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def total_steps(self) -> int:
        """Optimiser steps of this fit: max_steps, or the trainer's estimate (epochs)."""
        if not self.hparams.max_steps and self._trainer is None:
            return 0
        total = self.hparams.max_steps or self.trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) else 0

    def configure_optimizers(self):
        hp = self.hparams
        groups = [g for g in self.param_groups() if g["params"]]
        holds = [g.pop("hold", 0) for g in groups]
        for g in groups:
            g.setdefault("lr", hp.lr)
        opt = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), **_adamw_kernel(groups))
        total = self.total_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, [_cosine_with_warmup(hp.warmup_steps, total, hp.min_lr_ratio, h) for h in holds]
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Lightning's mixed-precision plugin refuses to clip for a fused optimizer (it
        could unscale the gradients itself), also in bf16-mixed, which has no grad scaler:
        `fit --trainer.precision bf16-mixed` (or `auto`) with `gradient_clip_val` stopped
        with an error. Without a scaler there is nothing to unscale: clip as in fp32."""
        plugin = self.trainer.precision_plugin
        scaled = getattr(plugin, "scaler", None) is not None
        if (
            gradient_clip_val
            and not scaled
            and getattr(optimizer, "_step_supports_amp_scaling", False)
        ):
            from pytorch_lightning.plugins.precision import Precision
            from pytorch_lightning.utilities import GradClipAlgorithmType

            algorithm = GradClipAlgorithmType(gradient_clip_algorithm or "norm")
            Precision.clip_gradients(plugin, optimizer, gradient_clip_val, algorithm)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


class CompileBackbone(pl.Callback):
    """`fit --compile`: when a fit starts, `torch.compile` the module's loss where it has
    `compile_loss` (a `SeqLM`: embedding to loss, one graph), else its backbones (in
    place); state-dict keys do not change either way. Also what it cost: the first
    training step's time less the median of the next `timed` steps (the compile time of
    the training graphs; a sanity check's eval graph compiles before it, inside the sanity
    check). Logged as `compile/seconds` and `compile/step_seconds`, and printed."""

    def __init__(self, timed: int = 5, mode: str | None = None, backend: str = "inductor"):
        self.timed, self.mode, self.backend = timed, mode, backend
        self.times: list[float] = []
        self.seconds: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from .backbones import compile_backbones  # after setup, which may build them

        if callable(getattr(pl_module, "compile_loss", None)):
            pl_module.compile_loss(mode=self.mode, backend=self.backend)
        else:
            compile_backbones(pl_module, mode=self.mode, backend=self.backend)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.seconds is not None:
            return
        self.times.append(time.perf_counter() - self._t0)
        if len(self.times) < min(self.timed + 1, max(2, trainer.max_steps or 2)):
            return
        step = statistics.median(self.times[1:])
        self.seconds = max(0.0, self.times[0] - step)
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"compile/seconds": self.seconds, "compile/step_seconds": step},
                step=trainer.global_step,
            )
        rank_zero_info(
            f"torch.compile: {self.seconds:.1f} s to compile, then {step * 1e3:.1f} ms per step"
        )


def _batch_size(batch: dict) -> int:
    return (batch["ids"] if "ids" in batch else batch["x"]).shape[0]


def _config_from_datamodule(config: dict, dm) -> dict:
    """Model config with vocab_size / d_input / d_cond filled in from a datamodule."""
    config = dict(config)
    if getattr(dm, "vocab", None) is not None:
        config["vocab_size"] = len(dm.vocab)
    elif getattr(dm, "vocab_size", 0):  # codes with no specials (a tokenized datamodule)
        config["vocab_size"] = dm.vocab_size
    config["d_input"] = getattr(dm, "d_input", 0) or config.get("d_input") or 0
    if config.get("d_cond") is None:
        config["d_cond"] = getattr(dm, "cond_dim", 0)
    return config


def load_pretrained_model(path: str) -> tuple[SeqModel, Vocab | None]:
    """The `SeqModel` and vocabulary of a SeqLM checkpoint (any format version)."""
    ckpt = load_checkpoint(path)
    cls = ckpt.get("seqmodels_class", "")
    if not cls.endswith(".SeqLM"):
        raise ValueError(f"{path}: a pretrained backbone must be a SeqLM checkpoint, not {cls!r}")
    # Built through SeqLM, so the model is configured exactly as the pretraining built it.
    lm = SeqLM(**SeqLM.hparams_for_load(ckpt))
    lm.load_state_dict(ckpt["state_dict"])
    return lm.model, lm.vocab


# ------------------------------------------------------------------------- pretraining
class SeqLM(_Optimised):
    """Trains a `SeqModel` with an objective: discrete tokens (embedding in, LM head out,
    cross-entropy) or continuous tokens (linear projection in, regression head out, MSE),
    with optional condition vectors projected to prefix embeddings (MatterGPT-style).

    vocab_size / d_input / d_cond left unset are read from the datamodule in `setup()`.
    `init_from` loads a pretrained checkpoint's weights (growing the vocabulary when the
    datamodule added task tokens), e.g. for label-as-token finetuning. The model is
    `self.model`; `forward`, `hidden` and `new_cache` are the model's.

    Both vocab_size and d_input (e.g. a TokenizedDataModule's "scales" layout): vector
    inputs, discrete targets. scale_embeddings: a learned embedding per scale of the
    `next_scale` objective. cond_dropout: the fraction of training rows whose condition
    is replaced by a learned null condition, for classifier-free guidance at sampling.
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
        scale_embeddings: bool = False,
        cond_dropout: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if not 0 <= cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self.objective = build_objective(objective)
        if scale_embeddings and not hasattr(self.objective, "sizes"):
            raise ValueError("scale_embeddings needs the next_scale objective (its scale sizes)")
        self.vocab = Vocab.from_dict(vocab) if vocab else None
        self._gen = torch.Generator().manual_seed(seed)
        self.model: SeqModel | None = None
        if vocab_size is not None or d_input:
            self._build()

    @property
    def built(self) -> bool:
        return self.model is not None

    def _build(self) -> None:
        config = ModelConfig.from_dict(dict(self.hparams))
        if self.hparams.get("scale_embeddings"):
            config.scale_sizes = list(self.objective.sizes)
        self.model = SeqModel(config)

    def setup(self, stage: str) -> None:
        if self.built:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            raise ValueError("SeqLM needs vocab_size or d_input, or a datamodule to read them from")
        if getattr(dm, "vocab", None) is not None:
            self.vocab = dm.vocab
            self.hparams.vocab = dm.vocab.to_dict()
        self.hparams.update(_config_from_datamodule(dict(self.hparams), dm))
        self._build()
        if self.hparams.init_from:
            self.load_pretrained(self.hparams.init_from)

    def load_pretrained(self, path: str) -> None:
        """Copy a checkpoint's weights in; vocabularies may only have grown (new tokens)."""
        old_model, old_vocab = load_pretrained_model(path)
        known = old_vocab is not None and self.vocab is not None
        if known and self.vocab.tokens[: len(old_vocab)] != old_vocab.tokens:
            raise ValueError(
                f"{path}: the pretrained vocabulary is not a prefix of this model's; "
                "add task tokens with Vocab.add_tokens so existing ids keep their rows"
            )
        if self.model.discrete and old_model.config.vocab_size != self.model.config.vocab_size:
            old_model.resize_vocab(self.model.config.vocab_size)
        self.model.load_state_dict(old_model.state_dict())

    def resize_vocab(self, n: int) -> None:
        """Grow (or shrink) the embedding and LM head to n rows, keeping existing rows."""
        self.model.resize_vocab(n)
        self.hparams.vocab_size = n

    # The model's parts, for code that reaches them through the LightningModule.
    @property
    def embed(self) -> nn.Embedding:
        return self.model.embed

    @property
    def head(self) -> nn.Linear:
        return self.model.head

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def hidden(
        self, ids=None, x=None, cond=None, mask="causal", blank=None, cache=None, drop_cond=None
    ):
        return self.model.hidden(ids, x, cond, mask, blank, cache, drop_cond)

    def forward(
        self, ids=None, x=None, cond=None, mask="causal", blank=None, cache=None, drop_cond=None
    ):
        return self.model(ids, x, cond, mask, blank, cache, drop_cond)

    def new_cache(self, batch: int):
        return self.model.new_cache(batch)

    # -- losses ---------------------------------------------------------------------
    def part_loss(self, out: ObjectiveOutput) -> torch.Tensor:
        kw = {"x": out.inputs} if out.inputs.is_floating_point() else {"ids": out.inputs}
        drop = None
        if self.training and out.cond is not None and self.hparams.get("cond_dropout"):
            u = torch.rand(out.cond.shape[0], generator=self._gen)
            drop = (u < self.hparams.cond_dropout).to(out.cond.device)
        compiled = getattr(self, "_compiled_loss", None)
        if compiled is not None:
            return compiled(kw, out.cond, out.mask, out.blank, drop, out.targets, out.weights)
        h = self.hidden(**kw, cond=out.cond, mask=out.mask, blank=out.blank, drop_cond=drop)
        # The head runs only on positions that carry loss weight (masked objectives score
        # a fraction of them; padding none): the same loss, without the unscored logits.
        w, targets = out.weights, out.targets
        keep = w > 0
        if not bool(keep.all()):
            h, w, targets = h[keep], w[keep], targets[keep]
        return self._weighted_loss(self.head(h), targets, w, out.weights)

    @staticmethod
    def _weighted_loss(pred, targets, w, all_weights) -> torch.Tensor:
        """sum(w * per-position loss) / sum(all weights): cross-entropy for discrete
        targets, MSE averaged over the features for continuous ones."""
        if not targets.is_floating_point():
            per = F.cross_entropy(
                pred.float().flatten(0, -2), targets.flatten(), reduction="none"
            ).view_as(w)
        else:
            per = F.mse_loss(pred.float(), targets.float(), reduction="none").mean(-1)
        return (per * w).sum() / all_weights.sum().clamp(min=1)

    def _graph_loss(self, kw, cond, mask, blank, drop, targets, weights) -> torch.Tensor:
        """The part loss as one graph for `torch.compile`: embedding, condition prefix,
        backbone, head and loss with no data-dependent shape, so nothing breaks the graph
        (the head runs on every position; unscored ones weigh 0, which is the same sum)."""
        h = self.hidden(**kw, cond=cond, mask=mask, blank=blank, drop_cond=drop)
        return self._weighted_loss(self.head(h), targets, weights, weights)

    def compile_loss(self, **compile_kwargs) -> None:
        """`torch.compile` each objective part's loss (embedding to loss, forward and
        backward: `fit --compile`) rather than the backbone alone, so the head, the
        cross-entropy and the residual stream's elementwise ops fuse with the backbone's.
        The parameters and state-dict keys do not change; the objective's random draws
        (masks, condition dropout) stay eager, on the module's generator."""
        self._compiled_loss = torch.compile(self._graph_loss, **compile_kwargs)

    def progress(self) -> float:
        """Fraction of training done, in [0, 1]: global_step over max_steps, or over the
        trainer's estimate of the total steps for epoch-based runs (max_steps=-1)."""
        if self._trainer is None:
            return 0.0
        total = getattr(self, "_total", None)
        if total is None:
            t = self.trainer
            if t.max_steps and t.max_steps > 0:
                total = t.max_steps
            elif t.state.fn == "fit":
                est = t.estimated_stepping_batches
                total = int(est) if math.isfinite(est) else 0
            else:
                return 0.0
            self._total = total
        return min(1.0, self.global_step / total) if total else 0.0

    def on_fit_start(self) -> None:
        self._total = None  # a new fit may have other limits

    def objective_loss(
        self, batch: dict, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict]:
        parts = self.objective(batch, generator, self.progress())
        total, named = 0.0, defaultdict(float)
        for out in parts:
            loss = self.part_loss(out)
            total = total + out.scale * loss
            named[out.name] += loss.detach()
        return total, dict(named)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, parts = self.objective_loss(batch, self._gen)
        bs = _batch_size(batch)
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
        bs = _batch_size(batch)
        self.log(f"{split}/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        for name, v in parts.items():
            self.log(f"{split}/loss_{name}", v, batch_size=bs, sync_dist=True)

    @staticmethod
    def hparams_for_load(ckpt: dict) -> dict:
        """Constructor arguments that rebuild this model from a checkpoint's own weights."""
        return {**ckpt["hyper_parameters"], "init_from": None}

    def resume_generators(self) -> dict[str, torch.Generator]:
        return {"objective": self._gen}


# ------------------------------------------------------------------------- finetuning
TASK_KINDS = (
    "classification",
    "regression",
    "dense_classification",
    "dense_regression",
    "dense_binary",
)
ATTENTIONS = ("bidirectional", "causal", "prefix")


class FinetuneModule(_Optimised):
    """Heads on a (pretrained or fresh) backbone, one per task, trained jointly.

    tasks: [{"name", "kind", "n_outputs", "head"?}, ...], kind one of TASK_KINDS.
    - classification / regression: the states are pooled (`pooling`) to (B, d_model);
      `label` (B,) class ids, or (B,) / (B, K) values.
    - dense_classification / dense_regression / dense_binary: the head sees every
      position and returns (B, L', K); `label` is (B, L') class ids, or (B, L', K)
      values / 0-1 targets; `label_mask` (B, L') or the outputs' shape, bool or float
      weights (default: `pad` when L' = L, else all), weights the loss:
      sum(w * loss) / sum(w). The default head gives L' = L; a domain's head may emit
      its own positions (e.g. voxels), and for dense_regression / dense_binary any
      output shape (B, ...) with `label` (and `label_mask`) of the same shape.
    A head spec {"class_path", "init_args"} replaces the default MLP; it is called as
    head(states (B, L, d_model), batch) for dense tasks and head(pooled) otherwise.
    Batches carry `task` (B,) indices into `tasks` (or none: every row is every task).

    attention: what the backbone runs with, independently of pooling: "bidirectional",
    "causal", or "prefix" (the first `prefix_len` positions, or batch["prefix_len"],
    see each other). A conditioned backbone gets the batch's `cond`, or when a batch
    has none a learned condition vector `default_cond` (initialised to zeros).
    backbone_lr: the backbone's learning rate (default lr); layer_lr_decay < 1 scales
    it by decay**k for parameters k levels below the top (final norm, then the layers
    top down, embeddings lowest). freeze_backbone: frozen for the whole run;
    freeze_fraction: frozen (lr 0, no backbone gradients) for that fraction of the
    total steps, then trained, its warmup starting when it unfreezes.
    Logs per-task metrics: accuracy, MCC, F1 (classification); MAE, RMSE (regression).
    """

    def __init__(
        self,
        tasks: list[dict],
        pretrained: str | None = None,
        backbone_config: dict | None = None,
        pooling: str = "mean",
        attention: str = "bidirectional",
        prefix_len: int | None = None,
        freeze_backbone: bool = False,
        freeze_fraction: float = 0.0,
        head_dropout: float = 0.1,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        layer_lr_decay: float = 1.0,
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
            if t.get("kind") not in TASK_KINDS or "name" not in t:
                raise ValueError(f"task {t!r}: needs a name and a kind in {TASK_KINDS}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if attention not in ATTENTIONS:
            raise ValueError(f"unknown attention {attention!r}; expected one of {ATTENTIONS}")
        if not 0 <= freeze_fraction < 1:
            raise ValueError("freeze_fraction must be in [0, 1)")
        self.lm: SeqModel | None = None
        if pretrained:
            self.lm, _ = load_pretrained_model(pretrained)
        elif backbone_config:
            # SeqLM's arguments are accepted (a SeqLM config reused as is); those about
            # training, not the model, are ignored.
            known = {*ModelConfig.__dataclass_fields__, *inspect.signature(SeqLM).parameters}
            unknown = set(backbone_config) - known
            if unknown:
                raise ValueError(f"backbone_config: unknown keys {sorted(unknown)}")
            if backbone_config.get("vocab_size") or backbone_config.get("d_input"):
                self.lm = SeqModel(ModelConfig.from_dict(backbone_config))
        self.heads = nn.ModuleDict()
        self._outputs: dict = defaultdict(list)
        if self.lm is not None:
            self._build_heads()

    def _build_heads(self) -> None:
        d = self.lm.config.d_model
        for t in self.hparams.tasks:
            n = t.get("n_outputs", 2 if t["kind"].endswith("classification") else 1)
            self.heads[t["name"]] = build_head(t.get("head"), d, n, self.hparams.head_dropout)
        if self.lm.config.d_cond:
            self.default_cond = nn.Parameter(torch.zeros(self.lm.config.d_cond))
        if self.hparams.freeze_backbone:
            self.lm.requires_grad_(False)

    def setup(self, stage: str) -> None:
        if self.lm is None:  # a fresh backbone sized from the datamodule
            dm = getattr(self.trainer, "datamodule", None)
            if dm is None:
                raise ValueError("FinetuneModule needs a sized backbone_config or a datamodule")
            config = _config_from_datamodule(self.hparams.backbone_config or {}, dm)
            self.lm = SeqModel(ModelConfig.from_dict(config))
            self._build_heads()

    # -- forward --------------------------------------------------------------------
    def _frozen_now(self) -> bool:
        hold = getattr(self, "_hold", 0)
        return self.training and self._trainer is not None and self.global_step < hold

    def _attention(self, batch: dict) -> AttentionSpec:
        pad, kind = batch.get("pad"), self.hparams.attention
        if kind != "prefix":
            return AttentionSpec(kind, pad=pad)
        n = batch.get("prefix_len", self.hparams.prefix_len)
        if n is None:
            raise ValueError("attention 'prefix' needs prefix_len (argument or batch key)")
        tokens = batch["ids"] if "ids" in batch else batch["x"]
        n = torch.as_tensor(n, device=tokens.device).expand(tokens.shape[0])
        return AttentionSpec("prefix", prefix_len=n, pad=pad)

    def hidden(self, batch: dict) -> torch.Tensor:
        """Backbone states (B, L, d_model) under the configured attention."""
        kw = {"ids": batch["ids"]} if "ids" in batch else {"x": batch["x"]}
        cond = batch.get("cond")
        if cond is None and self.lm.n_cond:
            cond = self.default_cond.expand(_batch_size(batch), -1)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen_now()):
            return self.lm.hidden(**kw, cond=cond, mask=self._attention(batch))

    def forward(self, batch: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per-task outputs for the rows of that task: {name: (rows, outputs)}; outputs
        (rows, K) for pooled tasks, (rows, L', K) for dense ones."""
        h = self.hidden(batch)
        pad = batch.get("pad")
        pooled = None
        task = batch.get("task")
        outs = {}
        for i, t in enumerate(self.hparams.tasks):
            rows = (
                torch.arange(h.shape[0], device=h.device)
                if task is None
                else (task == i).nonzero().flatten()
            )
            if not len(rows):
                continue
            head = self.heads[t["name"]]
            if t["kind"].startswith("dense"):
                sub = {k: v[rows] if torch.is_tensor(v) and v.shape[:1] == h.shape[:1] else v
                       for k, v in batch.items()}  # fmt: skip
                out = head(h[rows], sub) if t.get("head") else head(h[rows])
            else:
                if pooled is None:
                    pooled = pool(h, pad, self.hparams.pooling)
                out = head(pooled[rows])
            outs[t["name"]] = (rows, out)
        return outs

    # -- losses ---------------------------------------------------------------------
    @staticmethod
    def _dense_weights(batch: dict, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """label_mask, or pad when the head kept the positions, or None (all count)."""
        w = batch.get("label_mask")
        if w is None:
            pad = batch.get("pad")
            if pad is None or pad.shape[1] != out.shape[1]:
                return None
            w = pad
        return w[rows].float()

    def _task_loss(self, kind: str, out, y, w) -> torch.Tensor:
        if kind == "classification":
            return F.cross_entropy(out.float(), y.long())
        if kind == "regression":
            return F.mse_loss(out.float().view(y.shape[0], -1), y.float().view(y.shape[0], -1))
        if kind == "dense_classification":
            per = F.cross_entropy(out.float().transpose(1, 2), y.long(), reduction="none")
        elif kind == "dense_regression":
            per = F.mse_loss(out.float(), y.float().view(out.shape), reduction="none")
        else:  # dense_binary
            per = F.binary_cross_entropy_with_logits(
                out.float(), y.float().view(out.shape), reduction="none"
            )
        if w is None:
            return per.mean()
        if w.dim() == per.dim() - 1:  # one weight per position, for each of its outputs
            w = w.unsqueeze(-1).expand_as(per)
        return (per * w).sum() / w.sum().clamp(min=1e-8)

    def _losses(self, batch: dict, split: str | None) -> torch.Tensor:
        total = 0.0
        kinds = {t["name"]: t["kind"] for t in self.hparams.tasks}
        n = batch["label"].shape[0]
        for name, (rows, out) in self(batch).items():
            kind, y = kinds[name], batch["label"][rows]
            w = self._dense_weights(batch, rows, out) if kind.startswith("dense") else None
            total = total + self._task_loss(kind, out, y, w) * len(rows) / n
            if split:
                self._outputs[(split, name)].append(_for_metrics(kind, out, y, w))
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
            kind = t["kind"].removeprefix("dense_")
            if kind == "classification":
                m = _classification_metrics(out.argmax(-1), y.long(), out.shape[-1])
            elif kind == "binary":
                m = _classification_metrics((out > 0).long(), y.long(), 2)
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

    # -- optimisation ---------------------------------------------------------------
    def _layer_depths(self) -> dict[int, int]:
        """Depth of each backbone parameter (by id): 0 for embeddings and condition
        projection, k for the k-th layer, n_layers + 1 for what sits above the layers."""
        bb = self.lm.backbone
        layers = getattr(bb, "blocks", None) or getattr(bb, "layers", None) or []
        depth = {id(p): len(layers) + 1 for p in bb.parameters()}
        for k, layer in enumerate(layers):
            for p in layer.parameters():
                depth[id(p)] = k + 1
        return depth

    def param_groups(self) -> list[dict]:
        hp = self.hparams
        head = [(n, p) for n, p in self.named_parameters() if not n.startswith("lm.")]
        groups = [
            {"params": ps, "weight_decay": wd, "lr": hp.lr}
            for ps, wd in zip(_decay_split(head), (hp.weight_decay, 0.0))
        ]
        base = hp.backbone_lr if hp.backbone_lr is not None else hp.lr
        hold = getattr(self, "_hold", 0)
        depths = self._layer_depths()
        top = max(depths.values(), default=0)
        by_depth: dict[int, list] = defaultdict(list)
        for n, p in self.lm.named_parameters():
            by_depth[depths.get(id(p), 0)].append((n, p))
        for depth, named in sorted(by_depth.items()):
            lr = base * hp.layer_lr_decay ** (top - depth)
            for ps, wd in zip(_decay_split(named), (hp.weight_decay, 0.0)):
                groups.append({"params": ps, "weight_decay": wd, "lr": lr, "hold": hold})
        return groups

    def configure_optimizers(self):
        self._hold = round(self.hparams.freeze_fraction * self.total_steps())
        return super().configure_optimizers()

    # -- checkpoints ----------------------------------------------------------------
    @staticmethod
    def hparams_for_load(ckpt: dict) -> dict:
        return {
            **ckpt["hyper_parameters"],
            "pretrained": None,
            "backbone_config": ckpt["seqmodels_backbone"],
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # The backbone's config, so the checkpoint rebuilds without `pretrained`.
        checkpoint["seqmodels_backbone"] = self.lm.config.to_dict()


def _for_metrics(kind: str, out: torch.Tensor, y: torch.Tensor, w) -> tuple:
    """(outputs, labels) on CPU for epoch metrics; dense tasks keep only weighted positions."""
    out, y = out.detach().float(), y.detach()
    if kind.startswith("dense"):
        if w is None:
            w = out.new_ones(out.shape if kind != "dense_classification" else out.shape[:-1])
        if w.shape == out.shape or kind == "dense_binary":  # element-wise weights
            keep = (w if w.shape == out.shape else w.unsqueeze(-1).expand_as(out)) > 0
            return out[keep].cpu(), y.reshape(out.shape)[keep].cpu()
        keep = w > 0  # (B, L'): whole positions
        out, y = out[keep], y.reshape(*out.shape[:2], -1)[keep].squeeze(-1)
    return out.cpu(), y.cpu()


def _classification_metrics(pred: torch.Tensor, y: torch.Tensor, n: int) -> dict:
    task = "binary" if n == 2 else "multiclass"
    kw = {"num_classes": n} if n > 2 else {}
    avg = {"average": "macro"} if n > 2 else {}
    return {
        "acc": tmf.accuracy(pred, y, task=task, **kw),
        "mcc": tmf.matthews_corrcoef(pred, y, task=task, **kw),
        "f1": tmf.f1_score(pred, y, task=task, **kw, **avg),
    }
