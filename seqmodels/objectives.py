"""Training objectives: each maps a batch to (inputs, attention, targets, loss weights).

Positions are aligned so one head serves every objective: a position whose input is a
real token predicts the *next* token (next-token), a blanked position (input replaced
by the learned mask embedding) predicts *its own* token (random-token, next-all,
next-scale). This is what lets a mixture train one backbone and one head.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

from .backbones.attention import AttentionSpec


@dataclass
class ObjectiveOutput:
    name: str
    inputs: torch.Tensor  # ids (B, L) long, or x (B, L, D) float
    blank: torch.Tensor | None  # (B, L) bool: input replaced by the mask embedding
    mask: AttentionSpec
    targets: torch.Tensor  # (B, L) long, or (B, L, D) float
    weights: torch.Tensor  # (B, L) float; loss = sum(w * l) / sum(w)
    cond: torch.Tensor | None = None
    scale: float = 1.0  # this part's weight in the total loss


def _tokens(batch: dict) -> torch.Tensor:
    return batch["ids"] if "ids" in batch else batch["x"]


def _pad(batch: dict) -> torch.Tensor:
    t = _tokens(batch)
    pad = batch.get("pad")
    return pad if pad is not None else torch.ones(t.shape[:2], dtype=torch.bool, device=t.device)


def _random_like(pad: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(pad.shape, generator=generator).to(pad.device)


def _random_k(lengths: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """A cut point in [1, length - 1] per sample (the kept prefix is never empty)."""
    u = torch.rand(lengths.shape, generator=generator).to(lengths.device)
    return 1 + (u * (lengths - 1).clamp(min=1)).long().clamp(max=(lengths - 2).clamp(min=0))


class Objective:
    name = "objective"

    def __call__(
        self, batch: dict, generator: torch.Generator | None = None, progress: float = 0.0
    ) -> list[ObjectiveOutput]:
        raise NotImplementedError


class NextToken(Objective):
    """Causal next-token prediction; `loss_mask` in the batch selects which targets count."""

    name = "next_token"

    def __call__(self, batch, generator=None, progress=0.0):
        t, pad = _tokens(batch), _pad(batch)
        w = pad[:, 1:]
        if "loss_mask" in batch:
            w = w & batch["loss_mask"][:, 1:]
        spec = AttentionSpec("causal", pad=pad[:, :-1] if not pad.all() else None)
        out = ObjectiveOutput(
            self.name, t[:, :-1], None, spec, t[:, 1:], w.float(), batch.get("cond")
        )
        return [out]


class MaskEnhancedNextToken(NextToken):
    """MEAP: blank a small fraction of the inputs, keep the causal next-token loss."""

    name = "meap"

    def __init__(self, ratio: float = 0.15):
        self.ratio = ratio

    def __call__(self, batch, generator=None, progress=0.0):
        (out,) = super().__call__(batch, generator, progress)
        pad = _pad(batch)[:, :-1]
        blank = (_random_like(pad, generator) < self.ratio) & pad
        blank[:, 0] = False  # keep the first token (bos / anchor) visible
        out.blank = blank
        return [out]


class RandomToken(Objective):
    """Masked prediction: blank a ratio of tokens, reconstruct them with full attention."""

    name = "random_token"

    def __init__(self, ratio: float = 0.4, loss_on: str = "masked"):
        if loss_on not in ("masked", "all"):
            raise ValueError(f"loss_on must be 'masked' or 'all', not {loss_on!r}")
        self.ratio, self.loss_on = ratio, loss_on

    def __call__(self, batch, generator=None, progress=0.0):
        t, pad = _tokens(batch), _pad(batch)
        blank = (_random_like(pad, generator) < self.ratio) & pad
        w = blank if self.loss_on == "masked" else pad
        spec = AttentionSpec("bidirectional", pad=None if pad.all() else pad)
        return [ObjectiveOutput(self.name, t, blank, spec, t, w.float(), batch.get("cond"))]


class NextAll(Objective):
    """Keep a random prefix of K tokens, blank the rest, predict every remaining token at
    once (TokenUnify). Causal attention, so it shares the model with next-token."""

    name = "next_all"

    def __call__(self, batch, generator=None, progress=0.0):
        t, pad = _tokens(batch), _pad(batch)
        k = _random_k(pad.sum(1), generator)
        pos = torch.arange(pad.shape[1], device=pad.device)[None, :]
        blank = (pos >= k[:, None]) & pad
        spec = AttentionSpec("causal", pad=None if pad.all() else pad)
        return [ObjectiveOutput(self.name, t, blank, spec, t, blank.float(), batch.get("cond"))]


class NextScale(Objective):
    """Next-scale prediction (VAR): the sequence is scales 1..S concatenated; block s
    predicts the tokens of scale s from scales < s. Block s's inputs are the tokens of
    scale s-1 at each position's parent (nearest in raster order unless `parents` gives
    them); block 0 is blank. Attention is block-causal."""

    name = "next_scale"

    def __init__(self, scale_sizes: list[int], parents: list[list[int]] | None = None):
        self.sizes = list(scale_sizes)
        starts = [0]
        for n in self.sizes:
            starts.append(starts[-1] + n)
        self.starts = starts
        if parents is None:
            parents = [
                [i * self.sizes[s - 1] // self.sizes[s] for i in range(self.sizes[s])]
                for s in range(1, len(self.sizes))
            ]
        src = []  # for every position of blocks 1.., its parent's absolute index
        for s in range(1, len(self.sizes)):
            if len(parents[s - 1]) != self.sizes[s]:
                raise ValueError(f"parents of scale {s} must list {self.sizes[s]} indices")
            src += [starts[s - 1] + p for p in parents[s - 1]]
        self.src = torch.tensor(src, dtype=torch.long)
        block = torch.tensor(sum(([b] * n for b, n in enumerate(self.sizes)), []))
        self.allowed = block[None, :] <= block[:, None]

    def __call__(self, batch, generator=None, progress=0.0):
        t, pad = _tokens(batch), _pad(batch)
        L = self.starts[-1]
        if t.shape[1] != L:
            raise ValueError(
                f"next_scale expects {L} tokens (scales {self.sizes}), got {t.shape[1]}"
            )
        inputs = t.clone()
        inputs[:, self.sizes[0] :] = t[:, self.src.to(t.device)]
        blank = torch.zeros_like(pad)
        blank[:, : self.sizes[0]] = True
        spec = AttentionSpec(
            "custom", allowed=self.allowed.to(t.device), pad=None if pad.all() else pad
        )
        return [ObjectiveOutput(self.name, inputs, blank, spec, t, pad.float(), batch.get("cond"))]


def _interp(points: float | list, progress: float) -> float:
    """A constant weight, or piecewise-linear [[progress, weight], ...] over training."""
    if isinstance(points, (int, float)):
        return float(points)
    xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
    i = bisect.bisect_right(xs, progress)
    if i == 0:
        return ys[0]
    if i == len(xs):
        return ys[-1]
    f = (progress - xs[i - 1]) / (xs[i] - xs[i - 1])
    return ys[i - 1] + f * (ys[i] - ys[i - 1])


class Mixture(Objective):
    """A weighted mixture of objectives.

    mode "sum": every component on every batch, losses weighted (TokenUnify's code);
    mode "batch": one component per batch, drawn by weight; mode "sample": each sample
    draws its component. Weights are constants or piecewise-linear schedules over training
    progress: {"random_token": [[0, 1], [0.5, 0]], "next_all": 1}, or a list of specs with
    a "weight" key: [{"name": "random_token", "ratio": 0.4, "weight": 1}, ...].
    """

    name = "mixture"

    def __init__(self, components: dict | list, mode: str = "batch"):
        if mode not in ("sum", "batch", "sample"):
            raise ValueError(f"mixture mode must be sum, batch or sample, not {mode!r}")
        if not components:
            raise ValueError("a mixture needs at least one component")
        self.mode = mode
        if isinstance(components, dict):  # shorthand {name: weight}
            components = [{"name": k, "weight": w} for k, w in components.items()]
        self.parts: list[tuple[Objective, float | list]] = []
        for spec in components:
            spec = dict(spec)
            weight = spec.pop("weight", 1.0)
            self.parts.append((build_objective(spec), weight))

    def weights(self, progress: float) -> torch.Tensor:
        w = torch.tensor([_interp(p, progress) for _, p in self.parts])
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {w.tolist()}")
        return w / w.sum()

    def __call__(self, batch, generator=None, progress=0.0):
        w = self.weights(progress)
        if self.mode == "sum":
            outs = []
            for (obj, _), wi in zip(self.parts, w.tolist()):
                if wi > 0:
                    for o in obj(batch, generator, progress):
                        o.scale *= wi
                        outs.append(o)
            return outs
        if self.mode == "batch":
            i = int(torch.multinomial(w, 1, generator=generator))
            return self.parts[i][0](batch, generator, progress)
        n = _tokens(batch).shape[0]
        choice = torch.multinomial(w, n, replacement=True, generator=generator)
        outs = []
        for i, (obj, _) in enumerate(self.parts):
            rows = (choice == i).nonzero().flatten()
            if len(rows):
                sub = {
                    k: (v[rows.to(v.device)] if torch.is_tensor(v) else v) for k, v in batch.items()
                }
                for o in obj(sub, generator, progress):
                    o.scale *= len(rows) / n
                    outs.append(o)
        return outs


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls
    for cls in (NextToken, MaskEnhancedNextToken, RandomToken, NextAll, NextScale, Mixture)
}


def build_objective(spec: str | dict) -> Objective:
    """`"next_token"` or `{"name": "random_token", "ratio": 0.4}`."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {sorted(OBJECTIVES)}")
    try:
        return OBJECTIVES[name](**spec)
    except TypeError as err:
        raise ValueError(f"objective {name!r}: {err}") from err
