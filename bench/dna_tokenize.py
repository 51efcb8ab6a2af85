"""Tokenization throughput (bases/s) of each DNA tokenizer over the shared FASTA files, and
scoring throughput (sequences/s) of a small causal model (per-sequence log-likelihood).

Usage: python bench/dna_tokenize.py [--data DIR] [--repeats 3]. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domains.dna.inference import score_sequences  # noqa: E402
from domains.dna.readers import read_records  # noqa: E402
from domains.dna.tokenizers import SingleNucleotideTokenizer, build_tokenizer  # noqa: E402
from seqmodels.paths import data_path  # noqa: E402
from seqmodels.training import SeqLM  # noqa: E402


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_scoring(seqs: list[str], n: int = 256, threads: int = 1) -> dict:
    """Sequences/s for per-sequence log-likelihood with a small (untrained) model."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tok = SingleNucleotideTokenizer()
    model = SeqLM(vocab_size=tok.vocab_size, d_model=128, n_layers=4, n_heads=4, max_len=512)
    model.eval()
    batch = seqs[:n]
    dt = _time(lambda: score_sequences(model, tok, batch, batch_size=64), 1)
    return {
        "model": "untrained SeqLM transformer d128 L4, char tokens",
        "torch_threads": threads,
        "mean_len": sum(map(len, batch)) / len(batch),
        "seqs_per_s": len(batch) / dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=data_path("dna", "promoters"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bpe-vocab", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for scoring")
    args = ap.parse_args()
    if args.data is None or not Path(args.data).is_dir():
        sys.exit("no shared DNA data: pass --data DIR with .fa files or set SEQMODELS_DATA")
    files = sorted(Path(args.data).glob("*.fa"))
    seqs = [r.seq for f in files for r in read_records(f)]
    n_bases = sum(map(len, seqs))
    print(f"{len(files)} files, {len(seqs)} sequences, {n_bases:,} bases", file=sys.stderr)

    results = {}
    t0 = time.perf_counter()
    bpe = build_tokenizer("bpe", vocab_size=args.bpe_vocab, train_sequences=seqs)
    bpe_train_s = time.perf_counter() - t0
    tokenizers = {
        "char": build_tokenizer("char"),
        "kmer6": build_tokenizer("kmer", k=6),
        f"bpe{args.bpe_vocab}": bpe,
    }
    for name, tok in tokenizers.items():
        dt = _time(lambda tok=tok: tok.encode_batch(seqs), args.repeats)
        n_tokens = sum(len(x) for x in tok.encode_batch(seqs[:2000]))
        results[name] = {
            "bases_per_s": n_bases / dt,
            "bases_per_token": sum(map(len, seqs[:2000])) / n_tokens,
        }
        print(f"{name}: {n_bases / dt / 1e6:.1f} M bases/s", file=sys.stderr)
    # One long sequence: per-call overhead vanishes, this is the lookup-table speed itself.
    joined = "".join(seqs)
    dt = _time(lambda: tokenizers["char"].encode(joined), args.repeats)
    results["char_concatenated"] = {"bases_per_s": len(joined) / dt}
    out = {
        "bench": "dna_tokenize",
        "files": len(files),
        "sequences": len(seqs),
        "bases": n_bases,
        "bpe_train_s": bpe_train_s,
        "tokenizers": results,
        "target_char_bases_per_s": 50e6,
        "scoring": bench_scoring(seqs, threads=args.threads),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
