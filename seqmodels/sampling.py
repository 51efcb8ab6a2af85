"""generate(): batched sampling with a KV cache, temperature / top-k / top-p, condition
vectors, stop on eos, and a logits-processor hook for a domain's grammar."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

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
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    probs = logits.float().softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.inference_mode()
def _generate_batch(
    model, prompt, cond, max_new, temperature, top_k, top_p, processor, eos_id, use_cache, generator
) -> torch.Tensor:
    B = prompt.shape[0]
    ids = prompt
    done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    cache = model.new_cache(B) if use_cache else None
    out = []
    step_input = ids
    for _ in range(max_new):
        if cache is not None:
            logits = model(ids=step_input, cond=cond, cache=cache)[:, -1]
        else:
            logits = model(ids=ids, cond=cond)[:, -1]
        logits = logits.float()
        if processor is not None:
            logits = processor(ids, logits)
        nxt = _sample(logits, temperature, top_k, top_p, generator)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        out.append(nxt)
        done |= nxt == eos_id
        if done.all():
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        step_input = nxt[:, None]
    return torch.stack(out, dim=1) if out else prompt.new_zeros(B, 0)


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
) -> list[list[int]]:
    """Sample continuations of each prompt (num_samples each, in prompt order).

    prompts: one token-id list per condition (e.g. [[bos]]); cond: (N, d_cond) or None.
    A logits processor is fn(ids (B, T), logits (B, V)) -> logits; it may set -inf on
    forbidden tokens. Returns the new tokens of each sample, without prompt and eos;
    sampling stops at eos, after max_new_tokens, or at the model's max_len.
    Cached and uncached decoding draw the same tokens for the same seed.
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
