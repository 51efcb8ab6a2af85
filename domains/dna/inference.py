"""Inference with trained DNA models: constrained label classification (Omni-DNA), head
classification, per-sequence / per-position log-likelihood, and sequence generation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from domains.dna.tokenizers import BOS, EOS, SPECIALS, DNATokenizer

# -------------------------------------------------------------------- classification


def _pad_batch(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows])
    return ids, torch.arange(L)[None, :] < lengths[:, None]


@torch.no_grad()
def label_logprobs(
    model, prompts: Sequence[Sequence[int]], label_ids: Sequence[int], batch_size: int = 64
) -> np.ndarray:
    """log p(first label token | prompt) renormalised over the task's label set: (N, K).

    This is greedy decoding of the first label token constrained to the allowed labels,
    with the scores kept so reverse-complement views can be averaged.
    """
    out = []
    allowed = torch.as_tensor(list(label_ids))
    for s in range(0, len(prompts), batch_size):
        ids, pad = _pad_batch(prompts[s : s + batch_size])
        logits = model(ids=ids)  # causal: right padding never reaches real positions
        last = pad.long().sum(1) - 1
        rows = logits[torch.arange(len(ids)), last][:, allowed].float()
        out.append(torch.log_softmax(rows, -1).numpy())
    return np.concatenate(out)


@torch.no_grad()
def greedy_labels(
    model, prompts: Sequence[Sequence[int]], label_ids: Sequence[int], batch_size: int = 64
) -> np.ndarray:
    """Unconstrained greedy decoding of the first label token: the index of the argmax
    token in `label_ids`, or -1 when the model's top token is not one of the task's labels."""
    out = []
    lookup = {int(t): i for i, t in enumerate(label_ids)}
    for s in range(0, len(prompts), batch_size):
        ids, pad = _pad_batch(prompts[s : s + batch_size])
        logits = model(ids=ids)
        top = logits[torch.arange(len(ids)), pad.long().sum(1) - 1].argmax(-1)
        out.append(np.array([lookup.get(int(t), -1) for t in top]))
    return np.concatenate(out)


@torch.no_grad()
def head_logprobs(model, examples: Sequence[dict], task_index: int, batch_size: int = 64):
    """Class log-probabilities from a FinetuneModule's head for one task: (N, K)."""
    out = []
    for s in range(0, len(examples), batch_size):
        ids, pad = _pad_batch([e["ids"] for e in examples[s : s + batch_size]])
        task = torch.full((len(ids),), task_index, dtype=torch.long)
        (_, logits) = model({"ids": ids, "pad": pad, "task": task})[
            model.hparams.tasks[task_index]["name"]
        ]
        out.append(torch.log_softmax(logits.float(), -1).numpy())
    return np.concatenate(out)


def classify_split(
    model,
    dm,
    split: str = "test",
    rc_average: bool = False,
    batch_size: int = 64,
    decoding: str = "constrained",
) -> dict[str, dict[str, Any]]:
    """Predictions per task on a DNATaskDataModule split: {task: {y, pred, logp}}.

    rc_average: average the label log-probabilities of the sequence and its reverse
    complement (test-time augmentation; a causal LM is not strand-symmetric by itself).
    decoding (omni mode): "constrained" takes the best of the task's label tokens;
    "greedy" takes the model's top token over the whole vocabulary, as Omni-DNA's
    generation does; `invalid` marks predictions that are not a label of the task (their
    `pred` is set to a wrong class so they count as errors).
    """
    if decoding not in ("constrained", "greedy"):
        raise ValueError(f"decoding must be 'constrained' or 'greedy', got {decoding!r}")
    dm.setup("fit")
    results = {}
    for ti, t in enumerate(tqdm(dm.tasks, desc=f"classify {split}", unit="task")):
        seqs, y = t.subset(split)
        if not seqs:
            continue
        views = [dm.tokenizer.encode_batch(seqs)]
        if rc_average:
            views.append(dm.tokenizer.encode_rc_batch(seqs))
        logps = []
        for ids in views:
            exs = [dm.encode_example(ti, x, None) for x in ids]
            if dm.mode == "omni":
                layout = dm.task_layout()[ti]
                logps.append(
                    label_logprobs(model, [e["ids"] for e in exs], layout["label_ids"], batch_size)
                )
            else:
                logps.append(head_logprobs(model, exs, ti, batch_size))
        logp = np.mean(logps, axis=0)
        pred = logp.argmax(-1)
        invalid = np.zeros(len(y), dtype=bool)
        if decoding == "greedy" and dm.mode == "omni":
            exs = [dm.encode_example(ti, x, None) for x in views[0]]
            layout = dm.task_layout()[ti]
            pred = greedy_labels(model, [e["ids"] for e in exs], layout["label_ids"], batch_size)
            invalid = pred < 0
            pred = np.where(invalid, (y + 1) % len(t.labels), pred)
        results[t.name] = {
            "y": y,
            "pred": pred,
            "logp": logp,
            "labels": t.labels,
            "invalid": invalid,
        }
    return results


# -------------------------------------------------------------------- scoring


@torch.no_grad()
def score_sequences(
    model,
    tokenizer: DNATokenizer,
    seqs: Sequence[str],
    batch_size: int = 64,
    per_position: bool = False,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Log-likelihood of each sequence under a causal model: sum over its tokens of
    log p(token | <bos> + earlier tokens), natural log, eos not counted.

    Records longer than the model's context are scored in consecutive chunks, each
    restarted from <bos> (an approximation only for records longer than max_len - 1
    tokens). With `per_position`, each record also gets the per-token log-probabilities
    (per base for single-nucleotide tokens: variant effect = difference of two records).
    """
    max_len = int(model.hparams.get("max_len", 512))
    chunk = max_len - 1
    encoded = tokenizer.encode_batch(list(seqs))
    pieces = []  # (record index, token ids of one chunk)
    for i, ids in enumerate(encoded):
        for s in range(0, max(len(ids), 1), chunk):
            pieces.append((i, ids[s : s + chunk]))
    order = sorted(range(len(pieces)), key=lambda j: len(pieces[j][1]))  # less padding
    piece_lp: dict[int, np.ndarray] = {}
    it = range(0, len(order), batch_size)
    for s in tqdm(it, desc="score", unit="batch", disable=not progress):
        idx = order[s : s + batch_size]
        rows = [[BOS, *pieces[j][1].tolist()] for j in idx]
        ids, pad = _pad_batch(rows)
        logits = model(ids=ids).float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        for r, j in enumerate(idx):
            piece_lp[j] = lp[r, : len(rows[r]) - 1].numpy()
    per_rec: list[list[np.ndarray]] = [[] for _ in seqs]
    for j, (i, _) in enumerate(pieces):
        per_rec[i].append(piece_lp[j])
    out = []
    for i, parts in enumerate(per_rec):
        lp = np.concatenate(parts) if parts else np.zeros(0)
        rec = {
            "n_bases": len(seqs[i]),
            "n_tokens": int(len(lp)),
            "loglik": float(lp.sum()),
            "bits_per_base": float(-lp.sum() / math.log(2) / max(len(seqs[i]), 1)),
        }
        if per_position:
            rec["per_position"] = lp.tolist()
        out.append(rec)
    return out


# -------------------------------------------------------------------- generation


def base_token_processor(tokenizer: DNATokenizer, vocab_size: int, allow_n: bool = False):
    """Logits processor allowing only the tokenizer's base tokens (no specials, task or label
    tokens; no N unless asked), so samples always decode to DNA of the requested length."""
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    for i, tok in enumerate(tokenizer.tokens):
        whole = len(tok) == getattr(tokenizer, "k", len(tok))  # k-mer tails would cut length
        if i >= len(SPECIALS) and whole and (allow_n or "N" not in tok):
            allowed[i] = True

    def processor(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return logits.masked_fill(~allowed.to(logits.device), float("-inf"))

    return processor


def sample_sequences(
    model,
    tokenizer: DNATokenizer,
    n: int,
    length: int,
    prompt: str = "",
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
) -> list[str]:
    """`n` sequences of `length` bases (prompt included) sampled from <bos> + prompt."""
    from seqmodels.sampling import generate

    prompt_tokens = tokenizer.encode(prompt, "--prompt")
    prompt_ids = [BOS, *prompt_tokens.tolist()]
    # What the model was given (policy-normalised: lowercase upper-cased, IUPAC -> N), which
    # is what the samples start with; the raw --prompt may differ.
    prompt = tokenizer.decode(prompt_tokens)
    per_token = getattr(tokenizer, "k", 1)  # BPE tokens hold >= 1 base: cut after
    need = max(0, math.ceil((length - len(prompt)) / per_token))
    max_len = int(model.hparams.get("max_len", 512))
    if len(prompt_ids) + need > max_len:
        raise ValueError(f"{length} bases need {len(prompt_ids) + need} tokens > max_len {max_len}")
    proc = base_token_processor(tokenizer, model.hparams.vocab_size)
    outs = generate(
        model,
        [prompt_ids],
        max_new_tokens=need,
        temperature=temperature,
        top_k=top_k,
        logits_processor=proc,
        eos_id=EOS,
        num_samples=n,
        seed=seed,
        batch_size=batch_size,
    )
    return [(prompt + tokenizer.decode(o))[:length] for o in outs]
