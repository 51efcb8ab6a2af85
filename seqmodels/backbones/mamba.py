"""Mamba (selective state space) backbone with a pure-PyTorch scan and an optional fused path.

Parameter names follow mamba-ssm's `Mamba` (in_proj, conv1d, x_proj, dt_proj, A_log, D,
out_proj) and `MambaLMHeadModel` (layers.i.norm, layers.i.mixer, norm_f), so one state dict
loads on both paths. With CUDA and `mamba_ssm` importable the mixer calls mamba-ssm's fused
kernel; elsewhere it runs `selective_scan`, a chunked scan with a hand-written backward.

Why not a log-space parallel scan on CPU: measured here, one exp over the (B, L, D, N)
decays costs more than the whole sequential recurrence (0.10 s vs 0.016 s at B=4, L=1024,
D=256, N=16), and log-space cumsums overflow once a chunk's decay exceeds e^88. So the
scan is chunked for memory (only chunk-sized (T, B, D, N) buffers and chunk-boundary
states exist) and each chunk runs the recurrence as in-place steps without an autograd
graph; the backward recomputes each chunk's states from its stored boundary state.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionSpec


# ---------------------------------------------------------------------------- the scan
def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
):
    """Plain sequential reference (autograd through every step), mamba-ssm's layout:
    u, delta, z (B, D, L); A (D, N); B, C (B, N, L); D (D,). Used by tests and benchmarks."""
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].to(ct)
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, L = u.shape
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A.to(ct)))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, B.to(ct), u)
    h = u.new_zeros(b, d, A.shape[1])
    ys = []
    for t in range(L):
        h = dA[:, :, t] * h + dBu[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t].to(ct)))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None].to(ct)
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


class _ChunkedScan(torch.autograd.Function):
    """y_t = C_t . h_t with h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t (time-major).

    u, delta (L, B, D); A (D, N); Bm, Cm (L, B, N). Returns y (L, B, D) and the last state.
    """

    @staticmethod
    def forward(ctx, u, delta, A, Bm, Cm, chunk: int):
        L, b, d = u.shape
        h = u.new_zeros(b, d, A.shape[1])
        y = torch.empty_like(u)
        starts = []
        for s in range(0, L, chunk):
            e = min(s + chunk, L)
            starts.append(h)
            decay, bx = _chunk_inputs(u[s:e], delta[s:e], A, Bm[s:e])
            h = _run(decay, bx, h, out=bx)  # bx now holds the states
            y[s:e] = torch.einsum("tbdn,tbn->tbd", bx, Cm[s:e])
        ctx.chunk = chunk
        ctx.save_for_backward(u, delta, A, Bm, Cm, torch.stack(starts))
        ctx.mark_non_differentiable(h)
        return y, h

    @staticmethod
    def backward(ctx, dy, _dlast):
        u, delta, A, Bm, Cm, starts = ctx.saved_tensors
        L, b, d = u.shape
        chunk = ctx.chunk
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dBm, dCm = torch.empty_like(Bm), torch.empty_like(Cm)
        dA = torch.zeros_like(A)
        g = u.new_zeros(b, d, A.shape[1])  # dLoss/dh flowing back from the next chunk
        a_next = None  # decay of the first step of the next chunk
        for i in reversed(range(len(starts))):
            s = i * chunk
            e = min(s + chunk, L)
            uc, dc, Bc, Cc = u[s:e], delta[s:e], Bm[s:e], Cm[s:e]
            T = e - s
            decay, bx = _chunk_inputs(uc, dc, A, Bc)
            H = torch.empty_like(bx)
            _run(decay, bx, starts[i], out=H)
            c = dy[s:e, :, :, None] * Cc[:, :, None, :]  # direct dLoss/dh_t
            G = torch.empty_like(H)
            for t in reversed(range(T)):
                if a_next is not None:
                    g.mul_(a_next)
                g.add_(c[t])
                G[t] = g
                a_next = decay[t]
            # dLoss/d(log decay_t) = G_t * decay_t * h_{t-1} = G_t * (h_t - bx_t)
            gl = G * (H - bx)
            dCm[s:e] = torch.einsum("tbd,tbdn->tbn", dy[s:e], H)
            gB = torch.einsum("tbdn,tbn->tbd", G, Bc)
            du[s:e] = gB * dc
            ddelta[s:e] = gB * uc + torch.einsum("tbdn,dn->tbd", gl, A)
            dBm[s:e] = torch.einsum("tbdn,tbd->tbn", G, dc * uc)
            dA += torch.einsum("tbdn,tbd->dn", gl, dc)
        return du, ddelta, dA, dBm, dCm, None


def _chunk_inputs(u, delta, A, Bm):
    """Decays exp(delta A) and inputs delta u B of one chunk, each (T, B, D, N)."""
    return torch.exp(delta[..., None] * A), (delta * u)[..., None] * Bm[:, :, None, :]


def _run(decay: torch.Tensor, bx: torch.Tensor, h0: torch.Tensor, out: torch.Tensor):
    """h_t = decay_t h_{t-1} + bx_t from h0, written to out[t] (`out` may be `bx` itself).
    In-place steps without autograd: the loop costs less than one exp over the chunk."""
    h = h0.clone()
    for t in range(decay.shape[0]):
        h.mul_(decay[t]).add_(bx[t])
        out[t] = h
    return h


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int = 64,
):
    """Chunked selective scan with mamba-ssm's `selective_scan_fn` signature and layout:
    u, delta, z (B, D, L); A (D, N); B, C (B, N, L); D (D,). Computed in float32 (float64
    when u is float64, which the parity tests use)."""
    dtype_in = u.dtype
    ct = torch.float64 if u.dtype == torch.float64 else torch.float32
    uf, df = u.to(ct), delta.to(ct)
    if delta_bias is not None:
        df = df + delta_bias[..., None].to(ct)
    if delta_softplus:
        df = F.softplus(df)

    def tm(t: torch.Tensor) -> torch.Tensor:  # (B, *, L) -> contiguous (L, B, *)
        return t.to(ct).permute(2, 0, 1).contiguous()

    y, last = _ChunkedScan.apply(tm(uf), tm(df), A.to(ct), tm(B), tm(C), chunk_size)
    y = y.permute(1, 2, 0)
    if D is not None:
        y = y + uf * D[:, None].to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    return (y, last) if return_last_state else y


@lru_cache(maxsize=1)
def _fused():
    """mamba-ssm's fused kernels, or None when mamba_ssm, causal-conv1d (which its fused path
    needs, as mamba-ssm's own `Mamba` checks) or their CUDA builds are absent."""
    try:
        from causal_conv1d import causal_conv1d_fn  # noqa: F401
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn
    except Exception:  # ImportError, or a CUDA extension failing to load
        return None
    return mamba_inner_fn


# ---------------------------------------------------------------------------- the mixer
class _DtProj(nn.Module):
    """dt_proj as a plain module, not an nn.Linear: generic init passes over every Linear
    (SeqLM's normal(0.02) and zero bias) would otherwise erase Mamba's dt initialisation.
    Its parameters keep nn.Linear's names (weight, bias), so checkpoints are unchanged."""

    def __init__(self, rank: int, d_inner: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(d_inner, rank))
        self.bias = nn.Parameter(torch.empty(d_inner))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MambaMixer(nn.Module):
    """One Mamba block (mamba-ssm's `Mamba`): in_proj -> causal depthwise conv1d -> SiLU ->
    selective scan (input-dependent dt, B, C) -> gate by SiLU(z) -> out_proj."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        use_fast_path: bool = True,
        chunk_size: int = 64,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.use_fast_path, self.chunk_size = use_fast_path, chunk_size
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = _DtProj(self.dt_rank, self.d_inner)
        # mamba-ssm's initialisation: dt log-uniform in [dt_min, dt_max], A = -(1..N).
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        # mamba-ssm's convention, read by the core's AdamW groups: A and D are not decayed
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, h: torch.Tensor, state: dict | None = None) -> torch.Tensor:
        """h (B, L, d_model) -> (B, L, d_model). With `state` (a dict), continue from its
        conv/ssm states when present and leave the final ones in it."""
        if state is not None and "ssm" in state:
            return torch.stack([self.step(h[:, t], state) for t in range(h.shape[1])], dim=1)
        b, L, _ = h.shape
        xz = self.in_proj(h).transpose(1, 2)  # (B, 2 d_inner, L)
        # float64 in, float64 A (as `step` does): the parity tests compare the two at 1e-10.
        A = -torch.exp(self.A_log.to(torch.float64 if h.dtype == torch.float64 else torch.float32))
        fused = _fused() if (self.use_fast_path and h.is_cuda and state is None) else None
        if fused is not None:
            return fused(
                xz,
                self.conv1d.weight,
                self.conv1d.bias,
                self.x_proj.weight,
                self.dt_proj.weight,
                self.out_proj.weight,
                self.out_proj.bias,
                A,
                None,
                None,
                self.D.float(),
                delta_bias=self.dt_proj.bias.float(),
                delta_softplus=True,
            )
        x, z = xz.chunk(2, dim=1)
        if state is not None:
            state["conv"] = F.pad(x, (self.d_conv - L, 0))[:, :, -self.d_conv :].clone()
        x = F.silu(self.conv1d(x)[..., :L])
        dt, Bm, Cm = self.x_proj(x.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)  # bias goes in as delta_bias
        y, last = selective_scan(
            x,
            dt,
            A,
            Bm.transpose(1, 2),
            Cm.transpose(1, 2),
            self.D,
            z,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            return_last_state=True,
            chunk_size=self.chunk_size,
        )
        if state is not None:
            state["ssm"] = last
        return self.out_proj(y.transpose(1, 2))

    def step(self, h: torch.Tensor, state: dict) -> torch.Tensor:
        """Recurrent mode: one token h (B, d_model) -> (B, d_model), updating `state`."""
        x, z = self.in_proj(h).chunk(2, dim=-1)  # (B, d_inner)
        conv = torch.roll(state["conv"], -1, dims=-1)
        conv[:, :, -1] = x
        state["conv"] = conv
        x = (conv * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, Bm, Cm = self.x_proj(x).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        ct = torch.float64 if h.dtype == torch.float64 else torch.float32  # as the scan
        dt = F.softplus(self.dt_proj(dt)).to(ct)  # (B, d_inner)
        x, Bm, Cm = x.to(ct), Bm.to(ct), Cm.to(ct)
        A = -torch.exp(self.A_log.to(ct))
        s = state["ssm"] * torch.exp(dt[..., None] * A) + (dt * x)[..., None] * Bm[:, None, :]
        state["ssm"] = s
        y = (s @ Cm[..., None]).squeeze(-1) + self.D.to(ct) * x
        y = (y * F.silu(z.to(ct))).to(h.dtype)
        return self.out_proj(y)


# ---------------------------------------------------------------------------- the backbone
class _BlockReverse(NamedTuple):
    """Where the reverse scan runs: every block of two or more positions becomes its own
    sequence (row `g`, reversed: position `r` in it), so neither the conv nor the state
    crosses a block boundary. (n, p) index the (batch, position) of those positions."""

    n: torch.Tensor
    p: torch.Tensor
    g: torch.Tensor
    r: torch.Tensor
    shape: tuple[int, int]  # (blocks, longest block)

    def __call__(self, mixer: MambaMixer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        buf = x.new_zeros(*self.shape, x.shape[-1])
        buf[self.g, self.r] = x[self.n, self.p]
        out = mixer(buf)  # a causal scan over each reversed block; zeros pad the short ones
        return y.index_put((self.n, self.p), out[self.g, self.r], accumulate=True)


class MambaLayer(nn.Module):
    """Pre-norm residual block; `mixer_bwd` (when bidirectional) scans each block of the
    mask reversed and is added to the forward scan (TokenUnify's bidirectional Mamba)."""

    def __init__(self, d_model: int, bidirectional: bool, dropout: float, **mixer_args):
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = MambaMixer(d_model, **mixer_args)
        self.mixer_bwd = MambaMixer(d_model, **mixer_args) if bidirectional else None
        self.drop = nn.Dropout(dropout)

    def forward(self, h, reverse: _BlockReverse | None, state: dict | None):
        x = self.norm(h)
        y = self.mixer(x, state)
        if reverse is not None:
            y = reverse(self.mixer_bwd, x, y)
        return h + self.drop(y)


class MambaCache:
    """Per-layer conv and SSM states for recurrent generation; `pos` counts seen tokens."""

    def __init__(self, n_layers: int):
        self.states: list[dict] = [{} for _ in range(n_layers)]
        self.pos = 0


def _refuse(spec: AttentionSpec, why: str) -> ValueError:
    return ValueError(f"backbone mamba cannot honour a {spec.kind} attention mask: {why}")


def _plan(
    spec: AttentionSpec, batch: int, start: int, L: int, bidirectional: bool, device
) -> _BlockReverse | None:
    """The reverse scans that make forward scan + reverse scan equal `spec` exactly over
    the positions [start, start + L) (the forward scan covers [0, i]; the reverse scan
    within i's block covers the rest of the block), or an error when no scan can."""
    T = start + L
    if spec.kind == "causal" and spec.pad is None:
        return None  # the forward scan alone (a fast path: no host sync)
    end = spec.block_ends(T, device)
    if end is None:
        raise _refuse(
            spec,
            "only block-causal masks (each position sees its own block and "
            "every earlier one) map onto a forward scan plus a blockwise reverse scan",
        )
    end = end.expand(batch, T)
    idx = torch.arange(T, device=device)
    if spec.pad is not None:
        pad = spec.pad.to(device).bool()
        lengths = pad.sum(1, keepdim=True)
        if not bool((pad == (idx < lengths)).all()):
            raise _refuse(
                spec,
                "padding must sit at the end of each row (a forward scan "
                "would read padding in the middle)",
            )
        # Padded keys are never seen: blocks stop at the real length; padding is singletons.
        end = torch.where(pad, end.clamp(max=lengths), idx + 1)
    first = torch.ones_like(end, dtype=torch.bool)
    first[:, 1:] = end[:, 1:] != end[:, :-1]
    bstart = torch.where(first, idx, 0).cummax(1).values
    multi = (end - bstart >= 2)[:, start:]
    if not bool(multi.any()):
        return None
    if not bidirectional:
        raise _refuse(
            spec,
            "a forward scan cannot see the rest of a position's own block "
            "(set backbone_args.bidirectional: true)",
        )
    bstart, end = bstart[:, start:] - start, end[:, start:] - start
    if bool((bstart[multi] < 0).any()):
        raise _refuse(
            spec,
            f"a block spans the cached positions (< {start}) and new ones; "
            "its reverse scan needs the whole block in one call",
        )
    heads = multi & first[:, start:]
    gid = (heads.flatten().cumsum(0) - 1).view_as(heads)  # a row per block
    n, p = multi.nonzero(as_tuple=True)
    g = gid[n, bstart[n, p]]
    r = end[n, p] - 1 - p
    longest = int((end - bstart)[multi].max())
    return _BlockReverse(n, p, g, r, (int(heads.sum()), longest))


class MambaBackbone(nn.Module):
    """Stack of Mamba layers. Every layer runs the forward scan; with `bidirectional=True`
    a second mixer scans each block of the mask reversed (the whole sequence under a
    bidirectional mask, the prefix under a prefix mask, each scale under next-scale's
    block-causal mask), so the layer sees exactly what the mask allows."""

    supports_cache = True

    def __init__(
        self,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int | None = None,  # unused: the protocol passes it to every backbone
        max_len: int | None = None,  # unused: a scan has no position table
        dropout: float = 0.0,
        bidirectional: bool = True,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        chunk_size: int = 64,
        use_fast_path: bool = True,
    ):
        super().__init__()
        mixer_args = dict(
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            chunk_size=chunk_size,
            use_fast_path=use_fast_path,
        )
        self.bidirectional = bidirectional
        self.layers = nn.ModuleList(
            MambaLayer(d_model, bidirectional, dropout, **mixer_args) for _ in range(n_layers)
        )
        self.norm_f = nn.RMSNorm(d_model, eps=1e-5)

    def new_cache(self, batch: int, device: torch.device, dtype: torch.dtype) -> MambaCache:
        return MambaCache(len(self.layers))

    def forward(
        self,
        h: torch.Tensor,
        mask: str | AttentionSpec = "causal",
        cache: MambaCache | None = None,
    ) -> torch.Tensor:
        """h (B, L, d_model) -> states. Honours causal, bidirectional, prefix and
        block-causal custom masks exactly (pads at the end of rows), and refuses others.
        With a cache, h holds positions [cache.pos, cache.pos + L), `mask` is in absolute
        positions, and every block of two or more positions must lie inside this call."""
        start = cache.pos if cache is not None else 0
        spec = AttentionSpec.of(mask)
        reverse = _plan(spec, h.shape[0], start, h.shape[1], self.bidirectional, h.device)
        for i, layer in enumerate(self.layers):
            h = layer(h, reverse, cache.states[i] if cache is not None else None)
        if cache is not None:
            cache.pos += h.shape[1]
        return self.norm_f(h)
