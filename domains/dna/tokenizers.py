"""DNA tokenizers producing ids compatible with `seqmodels.vocab.Vocab`.

All three share the core's fixed special ids (pad 0, bos 1, eos 2, mask 3, sep 4, unk 5), so
`tokenizer.tokens` is a full id-ordered token list and `tokenizer.vocab()` is a core Vocab.
Single-nucleotide and k-mer encoding are numpy lookup tables (tens to hundreds of M bases/s);
BPE is HF `tokenizers`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from domains.dna.alphabet import (
    BASES,
    DEFAULT_POLICY,
    BasePolicy,
    DNAInputError,
    normalize,
    reverse_complement,
)

SPECIALS = ["<pad>", "<bos>", "<eos>", "<mask>", "<sep>", "<unk>"]
PAD, BOS, EOS, MASK, SEP, UNK = range(len(SPECIALS))
_BAD = 255  # marker for a rejected byte in the uint8 lookup tables


class DNATokenizer:
    """Common interface: `encode(seq) -> np.ndarray[int64]` (no bos/eos), `decode(ids)`."""

    name = "base"
    tokens: list[str]
    policy: BasePolicy

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def vocab(self):
        """A `seqmodels.vocab.Vocab` with the same ids as this tokenizer."""
        from seqmodels.vocab import Vocab

        vocab = Vocab(self.tokens[len(SPECIALS) :])
        assert vocab.tokens[: len(self.tokens)] == self.tokens, "core Vocab special ids changed"
        return vocab

    def encode(self, seq: str, where: str = "<sequence>") -> np.ndarray:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        specials = len(SPECIALS)
        return "".join(self.tokens[i] for i in ids if i >= specials or i == UNK)

    def encode_batch(self, seqs: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(s) for s in seqs]

    def reverse_complement_ids(self, ids: np.ndarray) -> np.ndarray:
        """Ids of the reverse complement, re-tokenized from the decoded ids (an exact map for
        single-nucleotide ids). A k-mer <unk> decodes as N * k, so around an N this loses
        the k-mer's other bases: use `encode_rc_batch` on the sequences when you have them."""
        return self.encode(reverse_complement(self.decode(ids)))

    def encode_rc_batch(self, seqs: Sequence[str]) -> list[np.ndarray]:
        """Ids of each sequence's reverse complement, encoded from the bases (lossless)."""
        return self.encode_batch([reverse_complement(normalize(s, self.policy)) for s in seqs])

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


def _bytes(seq: str, policy: BasePolicy, where: str) -> np.ndarray:
    """The sequence's bytes; a character outside latin-1 is reported like any non-DNA one."""
    try:
        return np.frombuffer(seq.encode("latin-1"), dtype=np.uint8)
    except UnicodeEncodeError:
        normalize(seq, policy, where)  # raises DNAInputError naming the character
        raise


def _base_table(policy: BasePolicy, codes: dict[str, int]) -> np.ndarray:
    """Byte -> code after policy normalisation, `_BAD` for rejected bytes."""
    canon = policy.table()
    lut = np.full(256, _BAD, dtype=np.uint8)
    ok = canon != 0
    lut[ok] = [codes[chr(c)] for c in canon[ok]]
    return lut


class SingleNucleotideTokenizer(DNATokenizer):
    """One token per base; reverse complement is the exact id map A<->T, C<->G, N->N."""

    name = "char"

    def __init__(self, policy: BasePolicy = DEFAULT_POLICY) -> None:
        self.policy = policy
        self.tokens = SPECIALS + list(BASES)
        ids = {b: len(SPECIALS) + i for i, b in enumerate(BASES)}
        self._lut = _base_table(policy, ids)
        self.rc_map = np.arange(len(self.tokens), dtype=np.int64)
        for b, c in zip("ACGTN", "TGCAN"):
            self.rc_map[ids[b]] = ids[c]
        self._dec = np.zeros(len(self.tokens), dtype=np.uint8)
        self._dec[len(SPECIALS) :] = np.frombuffer(BASES.encode(), np.uint8)

    def encode(self, seq: str, where: str = "<sequence>") -> np.ndarray:
        out = self._lut[_bytes(seq, self.policy, where)]
        if (out == _BAD).any():
            normalize(seq, self.policy, where)  # raises with the precise reason
        return out.astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        arr = arr[arr >= len(SPECIALS)]
        return self._dec[arr].tobytes().decode("ascii")

    def encode_batch(self, seqs: Sequence[str]) -> list[np.ndarray]:
        # One table lookup over the concatenation: per-call numpy overhead would otherwise
        # dominate for promoter-length (~250 nt) records.
        try:
            ids = self.encode("".join(seqs))
        except DNAInputError:
            return [self.encode(s, f"sequence #{i}") for i, s in enumerate(seqs)]  # names it
        return np.split(ids, np.cumsum([len(s) for s in seqs])[:-1]) if seqs else []

    def reverse_complement_ids(self, ids: np.ndarray) -> np.ndarray:
        return self.rc_map[np.asarray(ids, dtype=np.int64)[::-1]]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "policy": vars(self.policy)}


class KmerTokenizer(DNATokenizer):
    """Non-overlapping k-mers; the last len % k bases become single-base tokens.

    A k-mer containing N becomes <unk> (decoded back as N * k): 4^k tokens cover ACGT only.
    """

    name = "kmer"

    def __init__(self, k: int = 6, policy: BasePolicy = DEFAULT_POLICY) -> None:
        if not 2 <= k <= 8:  # k=1 would duplicate the single-base tail tokens
            raise ValueError(f"k must be in 2..8, got {k}")
        self.k, self.policy = k, policy
        kmers = ["".join(p) for p in product("ACGT", repeat=k)]
        self.tokens = SPECIALS + kmers + list(BASES)
        self._kmer0 = len(SPECIALS)
        self._single0 = self._kmer0 + len(kmers)
        self._lut = _base_table(policy, {b: i for i, b in enumerate(BASES)})  # N -> 4
        self._pow = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)

    def encode(self, seq: str, where: str = "<sequence>") -> np.ndarray:
        codes = self._lut[_bytes(seq, self.policy, where)]
        if (codes == _BAD).any():
            normalize(seq, self.policy, where)
        n = len(codes) // self.k * self.k
        blocks = codes[:n].reshape(-1, self.k).astype(np.int64)
        ids = blocks @ self._pow + self._kmer0
        ids[(blocks == 4).any(axis=1)] = UNK
        tail = codes[n:].astype(np.int64) + self._single0
        return np.concatenate([ids, tail])

    def encode_batch(self, seqs: Sequence[str]) -> list[np.ndarray]:
        # Records of equal length are encoded as one 2-D table lookup (promoter sets are
        # fixed-length); per-record numpy calls would dominate otherwise.
        out: list[np.ndarray] = [np.empty(0, np.int64)] * len(seqs)
        by_len: dict[int, list[int]] = {}
        for i, seq in enumerate(seqs):
            by_len.setdefault(len(seq), []).append(i)
        for length, idx in by_len.items():
            codes = self._lut[
                np.frombuffer("".join(seqs[i] for i in idx).encode("latin-1", "replace"), np.uint8)
            ]
            if (codes == _BAD).any() or length == 0:
                for i in idx:
                    out[i] = self.encode(seqs[i], f"sequence #{i}")  # names the bad record
                continue
            codes = codes.reshape(len(idx), length)
            n = length // self.k * self.k
            blocks = codes[:, :n].reshape(len(idx), -1, self.k).astype(np.int64)
            ids = blocks @ self._pow + self._kmer0
            ids[(blocks == 4).any(axis=2)] = UNK
            full = np.concatenate([ids, codes[:, n:].astype(np.int64) + self._single0], axis=1)
            for row, i in enumerate(idx):
                out[i] = full[row]
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(
            "N" * self.k if i == UNK else self.tokens[i]
            for i in ids
            if i >= len(SPECIALS) or i == UNK
        )

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "k": self.k, "policy": vars(self.policy)}


class BPETokenizer(DNATokenizer):
    """Byte-pair encoding learned with HF `tokenizers` on the training sequences.

    No pre-tokenizer: a sequence is one word, as in DNABERT-2; cut long records into windows
    before training.
    """

    name = "bpe"

    def __init__(self, hf_tokenizer, policy: BasePolicy = DEFAULT_POLICY) -> None:
        self.hf, self.policy = hf_tokenizer, policy
        vocab = hf_tokenizer.get_vocab()
        self.tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        if self.tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError("BPE tokenizer must have the seqmodels specials at ids 0..5")

    @classmethod
    def train(
        cls,
        sequences: Iterable[str],
        vocab_size: int = 4096,
        policy: BasePolicy = DEFAULT_POLICY,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> BPETokenizer:
        from tokenizers import Tokenizer, models, trainers

        hf = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIALS,
            initial_alphabet=list(BASES),
            show_progress=show_progress,
        )
        hf.train_from_iterator((normalize(s, policy) for s in sequences), trainer=trainer)
        return cls(hf, policy)

    def encode(self, seq: str, where: str = "<sequence>") -> np.ndarray:
        return np.asarray(self.hf.encode(normalize(seq, self.policy, where)).ids, dtype=np.int64)

    def encode_batch(self, seqs: Sequence[str]) -> list[np.ndarray]:
        norm = [normalize(s, self.policy) for s in seqs]
        return [np.asarray(e.ids, dtype=np.int64) for e in self.hf.encode_batch(norm)]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.name, "policy": vars(self.policy), "hf": json.loads(self.hf.to_str())}


def tokenizer_from_dict(d: dict[str, Any]) -> DNATokenizer:
    """Inverse of `to_dict` (stored next to checkpoints so encoding is reproducible)."""
    policy = BasePolicy(**d.get("policy", {}))
    kind = d["kind"]
    if kind == "char":
        return SingleNucleotideTokenizer(policy)
    if kind == "kmer":
        return KmerTokenizer(d["k"], policy)
    if kind == "bpe":
        from tokenizers import Tokenizer

        return BPETokenizer(Tokenizer.from_str(json.dumps(d["hf"])), policy)
    raise ValueError(f"unknown DNA tokenizer kind {kind!r}")


def build_tokenizer(
    kind: str = "char",
    k: int = 6,
    vocab_size: int = 4096,
    policy: BasePolicy = DEFAULT_POLICY,
    train_sequences: Iterable[str] | None = None,
) -> DNATokenizer:
    """Tokenizer by name: 'char' (single-nucleotide), 'kmer', or 'bpe' (needs sequences)."""
    if kind == "char":
        return SingleNucleotideTokenizer(policy)
    if kind == "kmer":
        return KmerTokenizer(k, policy)
    if kind == "bpe":
        if train_sequences is None:
            raise ValueError("BPE tokenizer needs train_sequences to learn merges")
        return BPETokenizer.train(train_sequences, vocab_size, policy)
    raise ValueError(f"unknown DNA tokenizer {kind!r}; expected char, kmer or bpe")


def tokenizer_from_vocab(
    tokens: Sequence[str], tokenizer_file: str | Path | None = None
) -> DNATokenizer:
    """The tokenizer a checkpoint's vocabulary was built with.

    Char and k-mer vocabularies are recognised from their tokens (task and label tokens
    appended later are ignored); BPE merges are not in the vocabulary, so BPE needs the
    `tokenizer.json` the datamodule wrote.
    """
    if tokenizer_file is not None:
        return load_tokenizer(tokenizer_file)
    tokens = list(tokens)
    n = len(SPECIALS)
    if tokens[n : n + 5] == list(BASES):
        return SingleNucleotideTokenizer()
    first = tokens[n] if len(tokens) > n else ""
    k = len(first)
    if 2 <= k <= 8 and first == "A" * k and tokens[n + 4**k - 1] == "T" * k:
        return KmerTokenizer(k)
    raise ValueError(
        "cannot tell the tokenizer from the vocabulary (BPE?): pass the tokenizer.json file"
    )


def save_tokenizer(tok: DNATokenizer, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(tok.to_dict()))


def load_tokenizer(path: str | Path) -> DNATokenizer:
    try:
        return tokenizer_from_dict(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path}: not a DNA tokenizer file ({err})") from err
