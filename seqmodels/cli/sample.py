"""`seqmodels generate`: sample token sequences from a checkpoint, and the samples files
that `seqmodels evaluate` reads back."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from seqmodels.commands import CLIError, load_object


def read_conditions(args: argparse.Namespace) -> list[list[float]] | None:
    """The condition vectors of --cond (JSON) or --cond-file (JSON, or one row per line)."""
    if args.cond and args.cond_file:
        raise CLIError("give --cond or --cond-file, not both")
    if args.cond:
        try:
            rows = json.loads(args.cond)
        except json.JSONDecodeError as err:
            raise CLIError(f"--cond is not JSON: {err}") from err
        source = "--cond"
    elif args.cond_file:
        path = Path(args.cond_file)
        if not path.is_file():
            raise CLIError(f"{path}: condition file not found")
        text = path.read_text()
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            rows = []
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rows.append([float(v) for v in line.replace(",", " ").split()])
                except ValueError as err:
                    raise CLIError(f"{path}:{lineno}: not a row of numbers: {line!r}") from err
        source = str(path)
    else:
        return None
    if rows and not isinstance(rows[0], list):
        rows = [rows]  # one condition vector
    if not rows or any(not isinstance(r, list) or len(r) != len(rows[0]) for r in rows):
        raise CLIError(f"{source}: expected a list of equal-length condition vectors")
    return [[float(v) for v in r] for r in rows]


def _load_for_sampling(args: argparse.Namespace):
    import torch

    from seqmodels.checkpoint import load_module

    if not args.ckpt:
        raise CLIError("--ckpt is required")
    model = load_module(args.ckpt)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    if getattr(args, "compile", False):
        from seqmodels.sampling import compile_decoding

        compile_decoding(model)
    vocab = getattr(model, "vocab", None)
    if vocab is None:
        raise CLIError(f"{args.ckpt}: the checkpoint stores no vocabulary; cannot sample tokens")
    return model, vocab


def sample_from_args(args: argparse.Namespace) -> list[dict]:
    """Sample `args.n` continuations per prompt/condition; one dict per sample."""
    from tqdm.auto import tqdm

    from seqmodels.sampling import generate

    model, vocab = _load_for_sampling(args)
    conds = read_conditions(args)
    try:
        prompts = [vocab.encode(p.split(), add_bos=True, strict=True) for p in args.prompt or [""]]
    except KeyError as err:
        raise CLIError(f"--prompt: {err.args[0]}") from err
    if conds is not None and len(prompts) not in (1, len(conds)):
        raise CLIError(f"{len(prompts)} prompts for {len(conds)} conditions; give 1 or one each")
    d_cond = int(getattr(model.hparams, "d_cond", 0) or 0)
    if conds is not None and len(conds[0]) != d_cond:
        raise CLIError(
            f"{args.ckpt}: the model takes condition vectors of size {d_cond}, got {len(conds[0])}"
        )
    n_rows = len(conds) if conds is not None else len(prompts)
    processor = load_object(args.processor)(vocab) if args.processor else None

    rows: list[dict] = []
    calls = 0
    with tqdm(total=n_rows * args.n, desc="generate", unit="sample") as bar:
        for i in range(n_rows):
            prompt = prompts[i if len(prompts) > 1 else 0]
            cond = conds[i] if conds is not None else None
            done = 0
            while done < args.n:
                k = min(args.batch_size, args.n - done)
                try:
                    outs = generate(
                        model,
                        [prompt],
                        cond=None if cond is None else [cond],
                        max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature,
                        top_k=args.top_k,
                        top_p=args.top_p,
                        logits_processor=processor,
                        eos_id=vocab.eos_id,
                        num_samples=k,
                        seed=args.seed + calls,
                        batch_size=args.batch_size,
                    )
                except ValueError as err:  # bad sampling settings or conditions
                    raise CLIError(f"generate from {args.ckpt}: {err}") from err
                calls += 1
                for j, ids in enumerate(outs):
                    rows.append(
                        {
                            "index": i,
                            "sample": done + j,
                            "cond": cond,
                            "prompt": vocab.decode(prompt),
                            "tokens": vocab.decode(ids),
                        }
                    )
                done += k
                bar.update(k)
    return rows


def write_samples(rows: list[dict], path: Path, sep: str) -> None:
    """`.jsonl`: one record per sample; any other suffix: the tokens, one sample per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        text = "".join(sep.join(r["tokens"]) + "\n" for r in rows)
    path.write_text(text)


def read_samples(path: Path, sep: str) -> list[list[str]]:
    """The token lists of a file `write_samples` wrote (or any text, one sample per line)."""
    if not path.is_file():
        raise CLIError(f"{path}: samples file not found")
    samples = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if path.suffix == ".jsonl":
            if not line.strip():
                continue
            try:
                samples.append([str(t) for t in json.loads(line)["tokens"]])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise CLIError(f"{path}:{lineno}: not a sample record ({err})") from err
        else:
            samples.append(line.split(sep) if sep else list(line))
    return samples


def sample_stats(rows: list[dict], seconds: float) -> dict[str, float]:
    n_tokens = sum(len(r["tokens"]) for r in rows)
    return {
        "n_samples": float(len(rows)),
        "mean_new_tokens": n_tokens / max(len(rows), 1),
        "sample_tokens_per_s": n_tokens / max(seconds, 1e-9),
    }


def cmd_generate(args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    rows = sample_from_args(args)
    stats = sample_stats(rows, time.perf_counter() - start)
    write_samples(rows, Path(args.out), args.sep)
    print(f"wrote {len(rows)} samples to {args.out}")
    return stats
