"""A synthetic multi-scale data set the project makes, and a tokenizer for it: the core's
next-scale demo (recipes/core/scales.yaml) needs no domain.

Signals: 1-D, `length` samples. Class c fixes a shape, a random integer position u and a
random amplitude a in [0.6, 1] place it; Gaussian noise (sigma 0.02) is added:

    0 narrow bump   a * g(t - u, 1.5)          1 wide bump   a * g(t - u, 4)
    2 step          a * sigmoid(t - u)          3 doublet     a * (g(t - u, 1.5) + g(t - u - 8, 1.5))

with u uniform over `n_positions` values. The position is coarse information (the first
scales must get it), the shape's width and edges fine information (the last scales).

`signal_metrics` scores signals against this family: for every (class, u) template the
least-squares amplitude is fitted; a signal is *valid* when the best fit has RMS residual
below 0.05 and amplitude in [0.5, 1.1]. Real signals are valid (residual ~ the noise,
0.02); an untrained generator's are not. It also reports whether the best fit's class is
the conditioning class, and the coverage of the 4 x n_positions templates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import SelfAttentionStack
from .data import TokenDataModule
from .quantizers import MultiScaleQuantizer
from .tokenizer import Tokenizer

N_CLASSES = 4
CLASS_NAMES = ("narrow bump", "wide bump", "step", "doublet")
FIRST_POSITION = 4
VALID_RMS = 0.05
VALID_AMPLITUDE = (0.5, 1.1)


def template(c: int, u: float, length: int) -> torch.Tensor:
    """The unit-amplitude shape of class c at position u."""
    t = torch.arange(length, dtype=torch.float32)

    def bump(centre: float, width: float) -> torch.Tensor:
        return torch.exp(-0.5 * ((t - centre) / width) ** 2)

    if c == 0:
        return bump(u, 1.5)
    if c == 1:
        return bump(u, 4.0)
    if c == 2:
        return torch.sigmoid(t - u)
    if c == 3:
        return bump(u, 1.5) + bump(u + 8, 1.5)
    raise ValueError(f"class must be in 0..{N_CLASSES - 1}, got {c}")


def templates(length: int = 32, n_positions: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All (class, position) shapes: (N_CLASSES * n_positions, length) and their (class, u)."""
    rows, labels = [], []
    for c in range(N_CLASSES):
        for u in range(FIRST_POSITION, FIRST_POSITION + n_positions):
            rows.append(template(c, u, length))
            labels.append((c, u))
    return torch.stack(rows), torch.tensor(labels)


def make_signals(
    n: int, length: int = 32, n_positions: int = 16, noise: float = 0.02, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """n signals (n, length) and their classes (n,), reproducible from seed."""
    if FIRST_POSITION + n_positions + 8 > length:
        raise ValueError(f"length {length} is too short for {n_positions} positions")
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(N_CLASSES, (n,), generator=g)
    u = FIRST_POSITION + torch.randint(n_positions, (n,), generator=g)
    a = 0.6 + 0.4 * torch.rand(n, generator=g)
    eps = noise * torch.randn(n, length, generator=g)
    x = torch.stack([template(int(c), int(p), length) for c, p in zip(classes, u)])
    return a[:, None] * x + eps, classes


def signal_metrics(
    signals: torch.Tensor,
    classes: Sequence[int] | torch.Tensor | None = None,
    n_positions: int = 16,
) -> dict[str, float]:
    """valid_fraction, class_match (valid and fitted class == conditioning class),
    coverage (distinct templates among valid signals / all templates), mean_rms.
    classes: (N,) class ids or (N, N_CLASSES) one-hot condition rows."""
    x = torch.as_tensor(signals, dtype=torch.float32)
    x = x.reshape(x.shape[0], -1)
    if not torch.isfinite(x).all():
        raise ValueError("signals contain NaN or inf")
    T, labels = templates(x.shape[1], n_positions)
    amp = (x @ T.T) / (T * T).sum(1)  # least-squares amplitude per (signal, template)
    resid = (x[:, None, :] - amp[..., None] * T[None]).pow(2).mean(-1).sqrt()
    rms, best = resid.min(1)
    a = amp.gather(1, best[:, None]).squeeze(1)
    valid = (rms < VALID_RMS) & (a >= VALID_AMPLITUDE[0]) & (a <= VALID_AMPLITUDE[1])
    out = {
        "valid_fraction": float(valid.float().mean()),
        "coverage": len(set(best[valid].tolist())) / len(T),
        "mean_rms": float(rms.mean()),
        "n_samples": float(len(x)),
    }
    if classes is not None:
        c = _class_ids(classes)
        out["class_match"] = float((valid & (labels[best, 0] == c)).float().mean())
    return out


def _class_ids(classes) -> torch.Tensor:
    c = torch.as_tensor(classes)
    return (c.argmax(-1) if c.dim() == 2 else c).long().flatten()


def one_hot(classes: torch.Tensor, n: int = N_CLASSES) -> list[list[float]]:
    return F.one_hot(torch.as_tensor(classes).long(), n).float().tolist()


class SyntheticScalesDataModule(TokenDataModule):
    """Synthetic signals (see the module docstring) as continuous examples: `x` (length, 1),
    `cond` the one-hot class, `label` the class. Made from `seed`, which also seeds the
    split, so the data set is the same on every run."""

    def __init__(
        self,
        n_examples: int = 4000,
        length: int = 32,
        n_positions: int = 16,
        noise: float = 0.02,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.n_examples, self.length = n_examples, length
        self.n_positions, self.noise = n_positions, noise

    def build(self) -> list[dict]:
        x, c = make_signals(self.n_examples, self.length, self.n_positions, self.noise, self.seed)
        cond = one_hot(c)
        return [{"x": x[i, :, None], "cond": cond[i], "label": int(c[i])} for i in range(len(x))]


class SignalTokenizer(Tokenizer):
    """Signals (B, length) -> multi-scale FSQ tokens and back.

    Encoder: patches of `patch` samples, a linear embedding, a bidirectional transformer,
    a projection to len(levels) channels; the finest scale is length / patch tokens. The
    multi-scale quantiser (VAR) codes them at `scales` (coarse to fine, the last equal to
    length / patch). Decoder: the mirror image. Loss: MSE of the reconstruction.
    """

    def __init__(
        self,
        length: int = 32,
        patch: int = 2,
        scales: Sequence[int] = (1, 2, 4, 8, 16),
        levels: Sequence[int] = (8, 8, 8),
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        scale_decay: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if length % patch or length // patch != scales[-1]:
            raise ValueError(f"the finest scale must be length / patch = {length // patch} tokens")
        self.length, self.patch = length, patch
        self.scales = list(scales)
        code_dim = len(levels)
        self.enc_in = nn.Linear(patch, d_model)
        self.encoder = SelfAttentionStack(d_model, n_heads, n_layers, scales[-1], rope=True)
        self.enc_out = nn.Sequential(nn.RMSNorm(d_model), nn.Linear(d_model, code_dim))
        self.quantizer = MultiScaleQuantizer(
            {"kind": "fsq", "levels": list(levels)}, self.scales, scale_decay=scale_decay
        )
        self.codebook_size = self.quantizer.codebook_size
        self.dec_in = nn.Linear(code_dim, d_model)
        self.decoder = SelfAttentionStack(d_model, n_heads, n_layers, scales[-1], rope=True)
        self.dec_out = nn.Sequential(nn.RMSNorm(d_model), nn.Linear(d_model, patch))

    def _signal(self, batch: dict) -> torch.Tensor:
        x = batch["x"]
        return x.reshape(x.shape[0], -1)

    def features(self, signal: torch.Tensor) -> torch.Tensor:
        patches = signal.reshape(signal.shape[0], -1, self.patch)
        return self.enc_out(self.encoder(self.enc_in(patches)))

    def reconstruct(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.dec_out(self.decoder(self.dec_in(f_hat))).reshape(f_hat.shape[0], -1)

    def loss(self, batch, generator=None):
        x = self._signal(batch)
        f_hat, indices, aux = self.quantizer(self.features(x))
        rec = F.mse_loss(self.reconstruct(f_hat), x)
        return rec + aux, {"mse": rec.detach()}, indices

    @torch.no_grad()
    def encode(self, batch: dict) -> torch.Tensor:
        return self.quantizer(self.features(self._signal(batch)))[1]

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Signals (B, length) from the ids of the first k scales (k = all: full detail)."""
        return self.reconstruct(self.quantizer.indices_to_codes(ids))


def plot_signals(signals: torch.Tensor, classes, path: str, per_class: int = 6) -> None:
    """A grid of signals, one row per class (classes: ids or one-hot rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = torch.as_tensor(signals).reshape(len(signals), -1)
    c = _class_ids(classes)
    fig, axes = plt.subplots(N_CLASSES, per_class, figsize=(1.6 * per_class, 1.3 * N_CLASSES))
    for k in range(N_CLASSES):
        rows = (c == k).nonzero().flatten()[:per_class].tolist()
        for j in range(per_class):
            ax = axes[k, j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylim(-0.3, 1.4)
            if j < len(rows):
                ax.plot(x[rows[j]].tolist(), lw=1)
        axes[k, 0].set_ylabel(CLASS_NAMES[k], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
