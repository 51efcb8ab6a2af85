"""Token vocabularies: fixed special tokens first, then a domain's tokens."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, BOS, EOS, MASK, SEP, UNK = "<pad>", "<bos>", "<eos>", "<mask>", "<sep>", "<unk>"
SPECIALS = (PAD, BOS, EOS, MASK, SEP, UNK)


class Vocab:
    """A list of token strings with fixed special ids (pad=0, bos=1, eos=2, mask=3, sep=4, unk=5).

    Task and condition tokens are appended with `add_tokens`; existing ids never move, so a
    pretrained model only needs new embedding rows (`SeqLM.resize_vocab`).
    """

    pad_id, bos_id, eos_id, mask_id, sep_id, unk_id = range(6)

    def __init__(self, tokens: Iterable[str] = ()):
        self.tokens: list[str] = list(SPECIALS)
        self._index: dict[str, int] = {t: i for i, t in enumerate(self.tokens)}
        self.add_tokens(tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens)"

    def add_tokens(self, tokens: Iterable[str]) -> list[int]:
        """Append tokens not yet present; returns the ids of all given tokens."""
        ids = []
        for token in tokens:
            if token not in self._index:
                self._index[token] = len(self.tokens)
                self.tokens.append(token)
            ids.append(self._index[token])
        return ids

    def token_to_id(self, token: str) -> int:
        return self._index[token]

    def id_to_token(self, idx: int) -> str:
        return self.tokens[idx]

    @property
    def special_ids(self) -> set[int]:
        return set(range(len(SPECIALS)))

    def encode(
        self,
        tokens: Sequence[str],
        add_bos: bool = False,
        add_eos: bool = False,
        strict: bool = False,
    ) -> list[int]:
        """Token strings to ids; unknown tokens map to unk, or raise KeyError when strict."""
        ids = [self.bos_id] if add_bos else []
        for token in tokens:
            idx = self._index.get(token)
            if idx is None:
                if strict:
                    raise KeyError(f"token {token!r} is not in the vocabulary")
                idx = self.unk_id
            ids.append(idx)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> list[str]:
        specials = self.special_ids if skip_special else set()
        return [self.tokens[int(i)] for i in ids if int(i) not in specials]

    def to_dict(self) -> dict:
        return {"tokens": self.tokens[len(SPECIALS) :]}

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        return cls(data["tokens"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a seqmodels vocabulary file ({err})") from err
