"""Training objectives: each maps a batch to (inputs, blanks, attention, targets, weights).

THE ALIGNMENT RULE. Every objective follows it, so one backbone and one head serve a
mixture of objectives without contradictory targets:

- Under **causal** (and **prefix**) attention the state at position i predicts the token
  at position i + 1, whether input i is a real token or blanked (replaced by the learned
  mask embedding). Under prefix attention a position inside the prefix sees its target,
  so only positions i >= prefix_len - 1 may carry weight.
- Under **bidirectional** and **custom** (block-causal) attention the state at position i
  predicts its *own* token, and its input must not carry that token: input i is blanked,
  or (next-scale) holds the token of its parent in the coarser scale (or, with continuous
  inputs, the coarser scales' reconstruction at i). No other position it sees carries it.

Positions index the batch's sequence (next-token-style objectives drop the last input,
which has no next token). A target counts only where the batch's `pad` and `loss_mask`
are true at the target's own position (`loss_mask[b, t]` says whether token t is scored).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
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


def _scored(batch: dict) -> torch.Tensor:
    """(B, L) bool: positions whose token may be a target (real, and in `loss_mask`)."""
    ok = _pad(batch).bool()
    if batch.get("loss_mask") is not None:
        ok = ok & batch["loss_mask"].bool().to(ok.device)
    return ok


def _spec_pad(batch: dict, pad: torch.Tensor) -> torch.Tensor | None:
    """None when nothing is padded, so the backbone takes its unmasked fast path. A batch
    without `pad` needs no check (on an accelerator `pad.all()` waits for the device)."""
    if batch.get("pad") is None:
        return None
    return None if pad.all() else pad


def _causal_pad(batch: dict, pad: torch.Tensor) -> torch.Tensor | None:
    """A causal part's padding mask, or None when it needs none: with padding only at the
    end of each row (as `collate` pads) a causal query sees only real keys, and padded
    queries carry no loss weight, so the unmasked fast path gives the same loss (a padded
    points-raster step: 1.43 -> 1.27 s). One host sync, as `_spec_pad`'s."""
    if batch.get("pad") is None:
        return None
    right_padded = bool((pad[:, 1:] <= pad[:, :-1]).all())
    return None if right_padded else pad


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


def _shifted(name: str, batch: dict, blank: torch.Tensor | None, weights: torch.Tensor):
    """A causal part: inputs 0..L-2 predict tokens 1..L-1 (weights over target positions)."""
    t, pad = _tokens(batch), _pad(batch)
    spec = AttentionSpec("causal", pad=_causal_pad(batch, pad[:, :-1]))
    w = (weights & _scored(batch))[:, 1:].float()
    return ObjectiveOutput(name, t[:, :-1], blank, spec, t[:, 1:], w, batch.get("cond"))


class NextToken(Objective):
    """Causal next-token prediction."""

    name = "next_token"

    def __call__(self, batch, generator=None, progress=0.0):
        return [_shifted(self.name, batch, None, _pad(batch))]


class MaskEnhancedNextToken(Objective):
    """MEAP: blank a small fraction of the inputs, keep the causal next-token loss."""

    name = "meap"

    def __init__(self, ratio: float = 0.15):
        self.ratio = ratio

    def __call__(self, batch, generator=None, progress=0.0):
        pad = _pad(batch)
        blank = (_random_like(pad, generator) < self.ratio) & pad
        blank[:, 0] = False  # keep the first token (bos / anchor) visible
        return [_shifted(self.name, batch, blank[:, :-1], pad)]


class RandomToken(Objective):
    """Masked prediction: blank a ratio of tokens, predict them with full attention."""

    name = "random_token"

    def __init__(self, ratio: float = 0.4):
        self.ratio = ratio

    def __call__(self, batch, generator=None, progress=0.0):
        t, pad = _tokens(batch), _pad(batch)
        blank = (_random_like(pad, generator) < self.ratio) & pad
        spec = AttentionSpec("bidirectional", pad=_spec_pad(batch, pad))
        w = (blank & _scored(batch)).float()
        return [ObjectiveOutput(self.name, t, blank, spec, t, w, batch.get("cond"))]


class NextAll(Objective):
    """Keep a random prefix of K >= 1 tokens, blank the rest, predict every remaining token
    at once (TokenUnify's next-all). attention "causal": positions K-1.. predict the next
    token (the rule's causal case; it shares a model with next-token); "bidirectional":
    the blanked positions predict themselves (TokenUnify's code runs it this way on its
    bidirectional network)."""

    name = "next_all"

    def __init__(self, attention: str = "causal"):
        if attention not in ("causal", "bidirectional"):
            raise ValueError(
                f"next_all attention must be causal or bidirectional, not {attention!r}"
            )
        self.attention = attention

    def __call__(self, batch, generator=None, progress=0.0):
        t, pad = _tokens(batch), _pad(batch)
        k = _random_k(pad.sum(1), generator)
        pos = torch.arange(pad.shape[1], device=pad.device)[None, :]
        blank = (pos >= k[:, None]) & pad
        if self.attention == "causal":  # targets K.. (the first from the last visible token)
            return [_shifted(self.name, batch, blank[:, :-1], blank)]
        spec = AttentionSpec("bidirectional", pad=_spec_pad(batch, pad))
        w = (blank & _scored(batch)).float()
        return [ObjectiveOutput(self.name, t, blank, spec, t, w, batch.get("cond"))]


def grid_parents(shapes: Sequence[int | Sequence[int]]) -> list[list[int]]:
    """Parents for next-scale prediction on grids: for scales 1..S-1, the index (raster
    order, last axis fastest) of each position's parent in the scale before, the cell
    covering it (coordinate c of a side n maps to c * n_prev // n).

    shapes: per-scale grid shapes, all of one dimensionality, e.g. [(1, 1), (2, 2), (4, 4)]
    or 3-D [(1, 1, 1), (2, 2, 2)]; plain ints are 1-D scales."""
    grids = [(int(s),) if isinstance(s, int) else tuple(int(n) for n in s) for s in shapes]
    if len({len(g) for g in grids}) > 1:
        raise ValueError(f"scale shapes must share one dimensionality, got {grids}")
    if any(n < 1 for g in grids for n in g):
        raise ValueError(f"scale shapes must be positive, got {grids}")
    out = []
    for prev, cur in zip(grids, grids[1:]):
        coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in cur), indexing="ij"), -1)
        pc = coords * torch.tensor(prev) // torch.tensor(cur)  # (*cur, ndim)
        strides = torch.tensor([math.prod(prev[i + 1 :]) for i in range(len(prev))])
        out.append((pc * strides).sum(-1).flatten().tolist())
    return out


class NextScale(Objective):
    """Next-scale prediction (VAR): the sequence is scales 0..S-1 concatenated; block s
    predicts the tokens of scale s, its inputs being the tokens of scale s-1 at each
    position's parent (block 0 is blank). Attention is block-causal: block s sees blocks
    <= s, so it sees no token of scale s (the rule's custom case).

    Give the scales as grid `shapes` ([[1, 1], [2, 2], [4, 4]]; plain ints declare 1-D
    scales, [1, 2, 4]), whose parents `grid_parents` derives, or as `scale_sizes` with
    explicit `parents` (for scales 1.., each position's index in the scale before).
    A batch with both `ids` and `x` feeds `x` (B, L, D) as the inputs instead of parent
    ids (block 0's rows are blanked) and predicts `ids`: VAR's continuous parents."""

    name = "next_scale"

    def __init__(
        self,
        scale_sizes: list[int] | None = None,
        parents: list[list[int]] | None = None,
        shapes: list | None = None,
    ):
        if shapes is not None:
            if parents is not None:
                raise ValueError("next_scale takes shapes or parents, not both")
            sizes = [math.prod([s] if isinstance(s, int) else s) for s in shapes]
            if scale_sizes is not None and list(scale_sizes) != sizes:
                raise ValueError(f"scale_sizes {list(scale_sizes)} do not match shapes {shapes}")
            scale_sizes, parents = sizes, grid_parents(shapes)
        if scale_sizes is None or (parents is None and len(scale_sizes) > 1):
            raise ValueError(
                "next_scale needs the scales' grid shapes (shapes=[[1, 1], [2, 2], [4, 4]]; "
                "shapes=[1, 2, 4] for 1-D scales) or scale_sizes with explicit parents"
            )
        self.sizes = [int(n) for n in scale_sizes]
        parents = parents or []
        if len(parents) != len(self.sizes) - 1:
            raise ValueError(f"parents must list {len(self.sizes) - 1} scales, got {len(parents)}")
        starts = [0]
        for n in self.sizes:
            starts.append(starts[-1] + n)
        self.starts = starts
        src = []  # for every position of blocks 1.., its parent's absolute index
        for s in range(1, len(self.sizes)):
            ps = [int(p) for p in parents[s - 1]]
            if len(ps) != self.sizes[s]:
                raise ValueError(f"parents of scale {s} must list {self.sizes[s]} indices")
            if any(not 0 <= p < self.sizes[s - 1] for p in ps):
                raise ValueError(
                    f"parents of scale {s} must index scale {s - 1} (0..{self.sizes[s - 1] - 1})"
                )
            src += [starts[s - 1] + p for p in ps]
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
        if "ids" in batch and "x" in batch:
            # Continuous parents, discrete targets (VAR): `x` holds each position's input,
            # the coarser scales' reconstruction at it (a tokenizer's next_scale_inputs).
            inputs = batch["x"]
        else:
            inputs = t.clone()
            inputs[:, self.sizes[0] :] = t[:, self.src.to(t.device)]
        blank = torch.zeros_like(pad)
        blank[:, : self.sizes[0]] = True
        spec = AttentionSpec("custom", allowed=self.allowed.to(t.device), pad=_spec_pad(batch, pad))
        w = _scored(batch).float()
        return [ObjectiveOutput(self.name, inputs, blank, spec, t, w, batch.get("cond"))]


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
