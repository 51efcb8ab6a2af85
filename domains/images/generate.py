"""Class-conditional generation: the core GPT samples k <= K image tokens per image with
classifier-free guidance, the tokenizer decodes them at that k.

Guidance is the core's (seqmodels.sampling, Ho & Salimans 2022): `u + scale * (c - u)`
with the model's learned null condition (train the AR model with `cond_dropout` > 0);
scale 1 is the plain conditional model, 0 the unconditional one.
"""

from __future__ import annotations

import numpy as np
import torch

from seqmodels.sampling import generate
from seqmodels.tokenizer import CODE_OFFSET, ids_to_codes
from seqmodels.vocab import Vocab


def only_codes(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Forbid the special tokens: an image is exactly k codes (eos is never sampled)."""
    logits[:, :CODE_OFFSET] = float("-inf")
    return logits


def sample_codes(
    model: torch.nn.Module,
    classes: list[int],
    n_classes: int,
    k: int,
    guidance: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    batch_size: int = 100,
    progress: bool = True,
) -> torch.Tensor:
    """(len(classes), k) codes, one image per entry of `classes`."""
    cond = torch.zeros(len(classes), n_classes)
    cond[torch.arange(len(classes)), torch.as_tensor(classes)] = 1.0
    rows = generate(
        model,
        [[Vocab.bos_id]] * len(classes),
        cond=cond,
        max_new_tokens=k,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        logits_processor=only_codes,
        guidance=guidance,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    if any(len(r) != k for r in rows):
        raise ValueError(f"the model stopped before {k} tokens (its max_len is too short)")
    return ids_to_codes(torch.tensor(rows))


@torch.no_grad()
def decode_codes(tokenizer, codes: torch.Tensor, batch: int = 256, seed: int = 0) -> np.ndarray:
    """Images (N, C, H, W) in [0, 1] from codes (N, k), decoded at k."""
    g = torch.Generator().manual_seed(seed)
    out = [tokenizer.decode(codes[s : s + batch], generator=g) for s in range(0, len(codes), batch)]
    return torch.cat(out).numpy()
