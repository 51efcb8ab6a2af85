"""Sampling.

- `generate()`: next-token sampling, batched, with a KV cache, temperature / top-k /
  top-p, condition vectors, stop on eos, and a logits-processor hook for a domain's grammar.
- `generate_scales()`: next-scale sampling (VAR): all tokens of a scale at once, scale by
  scale, with a KV cache over the block-causal mask; sampling settings per scale.
- Both take `guidance` (classifier-free guidance, Ho & Salimans 2022): logits =
  uncond + guidance * (cond - uncond), the unconditional pass using the model's learned
  null condition (train with `cond_dropout` > 0). 1 = the conditional model, 0 = the
  unconditional one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .backbones.attention import AttentionSpec

LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits per row (ties at the k-th value kept), -inf elsewhere."""
    if not k or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches p (the
    most likely token is always kept)."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass strictly before each token
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _sample(logits, temperature, top_k, top_p, generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    if temperature != 1:
        logits = logits / temperature
    logits = top_p_filter(top_k_filter(logits, top_k), top_p)
    probs = logits.float().softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def _guided(guidance: float, cond: torch.Tensor | None) -> bool:
    if guidance == 1.0:
        return False
    if cond is None:
        raise ValueError("classifier-free guidance (guidance != 1) needs condition vectors")
    return True


def _with_null(cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch twice, the second copy marked for the null condition."""
    B = cond.shape[0]
    drop = torch.arange(2 * B, device=cond.device) >= B
    return torch.cat([cond, cond]), drop


def _combine(logits: torch.Tensor, guidance: float) -> torch.Tensor:
    c, u = logits.float().chunk(2)
    return u + guidance * (c - u)


@torch.inference_mode()
def _generate_batch(
    model,
    prompt,
    cond,
    max_new,
    temperature,
    top_k,
    top_p,
    processor,
    eos_id,
    use_cache,
    generator,
    guidance=1.0,
) -> torch.Tensor:
    B, T0 = prompt.shape
    # The tokens so far, preallocated: each step writes one column (no copy of the
    # sequence per token); `ids` is a view of the filled part.
    buf = torch.empty(B, T0 + max_new, dtype=prompt.dtype, device=prompt.device)
    buf[:, :T0] = prompt
    ids = buf[:, :T0]
    done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    guided = _guided(guidance, cond)
    kw = {"cond": cond}
    if guided:
        kw["cond"], kw["drop_cond"] = _with_null(cond)
    rows = 2 * B if guided else B
    cache = model.new_cache(rows) if use_cache else None
    step = getattr(getattr(model, "model", model), "compiled_step", None) if cache else None
    step = step if rows <= STEP_ROWS else None
    step_input = ids
    n = 0
    for t in range(T0, T0 + max_new):
        inp = step_input if cache is not None else ids
        if guided:
            inp = torch.cat([inp, inp])
        if step is not None and cache.pos:  # one token per row after the prefill
            logits = step(inp, torch.tensor(cache.pos, device=inp.device), cache)
            cache.pos += 1
        elif step is not None:  # the prefill: one call, not worth the backbone's compile
            with torch.compiler.set_stance("force_eager"):
                logits = model(ids=inp, cache=cache, **kw)[:, -1]
        else:
            logits = model(ids=inp, cache=cache, **kw)[:, -1]
        logits = _combine(logits, guidance) if guided else logits.float()
        if processor is not None:
            logits = processor(ids, logits)
        nxt = _sample(logits, temperature, top_k, top_p, generator).masked_fill_(done, eos_id)
        buf[:, t] = nxt
        n += 1
        done |= nxt == eos_id
        if done.all():
            break
        ids = buf[:, : t + 1]
        step_input = buf[:, t : t + 1]
    return buf[:, T0 : T0 + n]


# Up to this many rows (samples, twice that under guidance) `generate` decodes through the
# compiled static step, above it through the backbone compiled for dynamic shapes. On an
# AMX Xeon, 1 thread, 256 tokens: the step is 1.22x the backbone graph at 1 row, 1.11x at
# 2, 1.06x at 4, 0.93x at 8, 0.88x at 16 and 0.59x at 64 (it reads the whole cache).
STEP_ROWS = 4


def compile_decoding(model: torch.nn.Module) -> str:
    """`generate --compile`, in place. The backbones are compiled with dynamic shapes (one
    graph for every cache length). Where the model also has a static decoding step (a
    transformer over tokens: `SeqModel.decode_step`), that step is compiled with static
    shapes, and batches of up to `STEP_ROWS` rows decode every token after the prompt
    through it: one graph for every position, recompiled for a new batch size. Returns
    "step" or "backbone" (no static step)."""
    from .backbones import compile_backbones

    compile_backbones(model, dynamic=True)

    inner = getattr(model, "model", model)  # a SeqLM holds its SeqModel as .model
    if getattr(inner, "has_decode_step", lambda: False)():
        if getattr(inner, "compiled_step", None) is None:
            # Inductor's pass that turns (1 x K) @ (K x N) products into its own fused
            # loops: the extern GEMM call costs about 11 us for one row (175 of a 590 us
            # step at batch 1); it applies to batch 1 only, where it pays.
            options = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}
            inner.compiled_step = torch.compile(
                inner.decode_step, fullgraph=True, dynamic=False, options=options
            )
        return "step"
    return "backbone"


def generate(
    model: torch.nn.Module,
    prompts: torch.Tensor | Sequence[Sequence[int]],
    cond: torch.Tensor | Sequence[Sequence[float]] | None = None,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    logits_processor: LogitsProcessor | None = None,
    eos_id: int | None = None,
    num_samples: int = 1,
    use_cache: bool = True,
    seed: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
    guidance: float = 1.0,
) -> list[list[int]]:
    """Sample continuations of each prompt (num_samples each, in prompt order).

    prompts: one token-id list per condition (e.g. [[bos]]); cond: (N, d_cond) or None.
    A logits processor is fn(ids (B, T), logits (B, V)) -> logits; it may set -inf on
    forbidden tokens. Returns the new tokens of each sample, without prompt and eos;
    sampling stops at eos, after max_new_tokens, or at the model's max_len.
    Cached and uncached decoding draw the same tokens for the same seed. guidance: see
    the module docstring (needs cond, and a model trained with cond_dropout).
    """
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0")
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    prompts = [list(map(int, p)) for p in prompts]
    if cond is not None:
        cond = torch.as_tensor(cond, dtype=torch.float32)
        if len(cond) != len(prompts):
            raise ValueError(f"{len(cond)} condition rows for {len(prompts)} prompts")
    if eos_id is None:
        vocab = getattr(model, "vocab", None)
        eos_id = vocab.eos_id if vocab is not None else 2
    max_len = getattr(getattr(model, "hparams", None), "max_len", None)
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    # Expand samples, then group equal-length prompts so a batch needs no padding.
    jobs = [(i, s) for i in range(len(prompts)) for s in range(num_samples)]
    results: dict[tuple[int, int], list[int]] = {}
    by_len: dict[int, list[tuple[int, int]]] = {}
    for job in jobs:
        by_len.setdefault(len(prompts[job[0]]), []).append(job)
    chunks = [
        grp[s : s + batch_size] for grp in by_len.values() for s in range(0, len(grp), batch_size)
    ]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="generate", unit="seq")
    try:
        for chunk in chunks:
            p = torch.tensor([prompts[i] for i, _ in chunk], device=device)
            c = cond[[i for i, _ in chunk]].to(device) if cond is not None else None
            # Stop at the model's context length, as at eos.
            room = max_len - p.shape[1] if max_len else max_new_tokens
            if room < 0:
                raise ValueError(f"a prompt of {p.shape[1]} tokens exceeds max_len {max_len}")
            new = _generate_batch(
                model,
                p,
                c,
                min(max_new_tokens, room),
                temperature,
                top_k,
                top_p,
                logits_processor,
                eos_id,
                use_cache,
                generator,
                guidance,
            )
            for job, row in zip(chunk, new.tolist()):
                results[job] = row[: row.index(eos_id)] if eos_id in row else row
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return [results[job] for job in jobs]


# ------------------------------------------------------------------ next-scale sampling

NextInput = Callable[[torch.Tensor], torch.Tensor]


def _per_scale(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name}: {len(value)} values for {n} scales")
        return list(value)
    return [value] * n


def _parent_input(src: torch.Tensor, starts: list[int]) -> NextInput:
    """Discrete next-scale inputs (the `next_scale` objective on ids): scale k's positions
    take the ids of their parents in scale k-1."""

    def inputs(ids: torch.Tensor) -> torch.Tensor:
        k = starts.index(ids.shape[1])
        return ids[:, src[starts[k] - starts[1] : starts[k + 1] - starts[1]].to(ids.device)]

    return inputs


@torch.inference_mode()
def generate_scales(
    model: torch.nn.Module,
    cond: torch.Tensor | Sequence[Sequence[float]] | None = None,
    scales: Sequence[int] | None = None,
    next_input: NextInput | None = None,
    num_samples: int = 1,
    temperature: float | Sequence[float] = 1.0,
    top_k: int | None | Sequence[int | None] = None,
    top_p: float | None | Sequence[float | None] = None,
    guidance: float = 1.0,
    use_cache: bool = True,
    seed: int | None = None,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Sample next-scale sequences: scale 0 from the condition, then each scale k from
    scales < k, all n_k tokens of a scale drawn at once (VAR's inference).

    model: a next-scale model (e.g. SeqLM with objective next_scale). scales: tokens per
    scale (default: the model objective's). next_input: ids of scales < k (B, sum n_<k)
    -> the model's inputs for scale k, (B, n_k, D) continuous (a tokenizer's
    `next_scale_input`: the upsampled cumulative reconstruction) or (B, n_k) ids; default:
    the parent ids of the model's `next_scale` objective. cond: (N, d_cond), each row
    sampled num_samples times (rows in order); None for an unconditional model.
    temperature / top_k / top_p: one value, or one per scale. With a KV cache only the
    new scale's positions are run at each step; without, the whole prefix is rerun (same
    logits). Returns ids (N * num_samples, sum(scales)); with return_logits also the
    logits of each scale (after guidance, before temperature).
    """
    objective = getattr(model, "objective", None)
    if scales is None:
        scales = getattr(objective, "sizes", None)
        if scales is None:
            raise ValueError("give scales: the model has no next_scale objective to read them from")
    scales = [int(n) for n in scales]
    S = len(scales)
    temps = _per_scale(temperature, S, "temperature")
    ks = _per_scale(top_k, S, "top_k")
    ps = _per_scale(top_p, S, "top_p")
    if any(t < 0 for t in temps):
        raise ValueError("temperature must be >= 0")
    starts = [0]
    for n in scales:
        starts.append(starts[-1] + n)
    if next_input is None and S > 1:
        src = getattr(objective, "src", None)
        if src is None:
            raise ValueError("give next_input: the model has no next_scale objective with parents")
        next_input = _parent_input(src, starts)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    if cond is not None:
        cond = torch.as_tensor(cond, dtype=torch.float32, device=device)
        cond = cond.repeat_interleave(num_samples, dim=0)
        B = cond.shape[0]
    else:
        B = num_samples
    guided = _guided(guidance, cond)
    kw: dict = {"cond": cond}
    if guided:
        kw["cond"], kw["drop_cond"] = _with_null(cond)
    block = torch.repeat_interleave(torch.arange(S), torch.tensor(scales)).to(device)
    allowed = block[None, :] <= block[:, None]
    cache = model.new_cache(2 * B if guided else B) if use_cache else None
    # Scale 0 is blank (the mask embedding), as in training: only its kind is read.
    d_input = _input_dim(model)
    first = (
        torch.zeros(B, scales[0], d_input, device=device)
        if d_input
        else torch.zeros(B, scales[0], dtype=torch.long, device=device)
    )
    ids = torch.zeros(B, 0, dtype=torch.long, device=device)
    inputs: list[torch.Tensor] = [first]
    all_logits = []
    try:
        for k in range(S):
            n = scales[k]
            if k:
                inputs.append(torch.as_tensor(next_input(ids)).to(device))
            end = starts[k + 1]
            if cache is not None:
                step, blank = inputs[k], _blank(B, starts[k], end, scales[0], device)
            else:
                step, blank = torch.cat(inputs, dim=1), _blank(B, 0, end, scales[0], device)
            if guided:
                step, blank = torch.cat([step, step]), torch.cat([blank, blank])
            key = "x" if step.is_floating_point() else "ids"
            spec = AttentionSpec("custom", allowed=allowed[:end, :end])
            logits = model(**{key: step}, blank=blank, mask=spec, cache=cache, **kw)[:, -n:]
            logits = _combine(logits, guidance) if guided else logits.float()
            if return_logits:
                all_logits.append(logits.clone())
            flat = _sample(logits.flatten(0, 1), temps[k], ks[k], ps[k], generator)
            ids = torch.cat([ids, flat.view(B, n)], dim=1)
    finally:
        model.train(was_training)
    return (ids, all_logits) if return_logits else ids


def _blank(B: int, start: int, end: int, n0: int, device) -> torch.Tensor:
    """Positions [start, end): True for scale 0's (blank) positions."""
    return (torch.arange(start, end, device=device) < n0)[None].expand(B, -1)


def _input_dim(model) -> int:
    """d_input of a SeqModel or of a SeqLM's model: > 0 when it takes vectors."""
    config = getattr(model, "config", None) or getattr(
        getattr(model, "model", None), "config", None
    )
    return int(getattr(config, "d_input", 0) or 0)
