"""SLICES tokens (elements, site indices, offsets) and the SLICES grammar as a logits processor.

The vocabulary is fixed (specials, elements up to Lr, site indices 0..max_atoms-1, the 27
offset words), so every model of a given max_atoms shares ids. The grammar follows the
canonical form: elements in canonical order, then edges `i j XYZ` with i <= j, sorted,
no duplicate, self-edges with a positive offset, eos only when every site has a bond; a
sampled string therefore parses by construction.
"""

from __future__ import annotations

import itertools

import torch

from domains.crystals.canonical import element_key
from domains.crystals.slices import ELEMENTS, OFFSET_SYMBOLS, SlicesError, parse
from seqmodels.vocab import Vocab

OFFSETS = tuple("".join(t) for t in itertools.product("-o+", repeat=3))
_OFFSET_VALUE = {w: tuple(OFFSET_SYMBOLS[c] for c in w) for w in OFFSETS}
_SORTED_ELEMENTS = tuple(sorted(ELEMENTS, key=element_key))


def build_vocab(max_atoms: int = 64) -> Vocab:
    return Vocab([*_SORTED_ELEMENTS, *(str(i) for i in range(max_atoms)), *OFFSETS])


def tokenize(slices: str) -> list[str]:
    """Tokens of a SLICES string (checked to parse)."""
    parse(slices)
    return slices.split()


def encode_ids(slices: str, vocab: Vocab, add_bos=True, add_eos=True) -> list[int]:
    toks = tokenize(slices)
    try:
        return vocab.encode(toks, add_bos=add_bos, add_eos=add_eos, strict=True)
    except KeyError as err:
        raise SlicesError(f"{err.args[0]} (more sites than the vocabulary's max_atoms?)") from err


def decode_ids(ids, vocab: Vocab) -> str:
    return " ".join(vocab.decode(ids, skip_special=True))


class _State:
    __slots__ = ("n", "last_el", "phase", "i", "j", "prev", "covered", "done")

    def __init__(self):
        self.n = 0
        self.last_el = None  # element_key of the last element
        self.phase = "elem"  # elem -> (i j off)* ; "j" after i, "off" after j, "i" after off
        self.i = self.j = -1
        self.prev = (-1, -1, (-2, -2, -2))
        self.covered: set[int] = set()
        self.done = False


class SlicesGrammar:
    """fn(ids (B, T), logits (B, V)) -> logits with -inf on tokens the grammar forbids."""

    def __init__(self, vocab: Vocab, max_atoms: int | None = None, canonical: bool = True):
        """canonical=False only enforces the syntax (for models trained on permuted strings)."""
        self.vocab, self.canonical = vocab, canonical
        self.el_ids = {}
        self.idx_ids = {}
        self.off_ids = {}
        for tid, tok in enumerate(vocab.tokens):
            if tok in _OFFSET_VALUE:
                self.off_ids[tid] = _OFFSET_VALUE[tok]
            elif tok.isdigit():
                self.idx_ids[tid] = int(tok)
            elif tok in ELEMENTS:
                self.el_ids[tid] = element_key(tok)
        self.index_of = {v: k for k, v in self.idx_ids.items()}
        self.max_atoms = min(max_atoms or len(self.idx_ids), len(self.idx_ids))
        self._last: torch.Tensor | None = None
        self._states: list[_State] = []

    def _step(self, st: _State, tid: int) -> None:
        if st.done or tid == self.vocab.eos_id:
            st.done = True
        elif tid in self.el_ids:
            st.n += 1
            st.last_el = self.el_ids[tid]
        elif tid in self.idx_ids and st.phase in ("elem", "i"):
            st.i, st.phase = self.idx_ids[tid], "j"
        elif tid in self.idx_ids:
            st.j, st.phase = self.idx_ids[tid], "off"
        elif tid in self.off_ids:
            st.prev = (st.i, st.j, self.off_ids[tid])
            st.covered.update((st.i, st.j))
            st.phase = "i"

    def allowed(self, st: _State) -> list[int]:
        if st.done:
            return [self.vocab.eos_id]
        if not self.canonical:
            return self._allowed_syntax(st)
        out: list[int] = []
        pi, pj, pt = st.prev
        if st.phase in ("elem", "i"):
            if st.phase == "elem" and st.n < self.max_atoms:
                out += [t for t, k in self.el_ids.items() if st.last_el is None or k >= st.last_el]
            if st.n > 0:
                # sorted edges: i never decreases and never passes a site still without bonds
                uncovered = [k for k in range(st.n) if k not in st.covered]
                hi = min(uncovered) if uncovered else st.n - 1
                for i in range(max(pi, 0), hi + 1):
                    lo = pj if i == pi else i
                    if any(self._has_offset(st, i, j) for j in range(lo, st.n)):
                        out.append(self.index_of[i])
            if st.phase == "i" and len(st.covered) == st.n:
                out.append(self.vocab.eos_id)
        elif st.phase == "j":
            lo = pj if st.i == pi else st.i
            out += [self.index_of[j] for j in range(lo, st.n) if self._has_offset(st, st.i, j)]
        else:  # offset
            out += [t for t, off in self.off_ids.items() if self._offset_ok(st, st.i, st.j, off)]
        return out

    def _allowed_syntax(self, st: _State) -> list[int]:
        out: list[int] = []
        if st.phase == "elem" and st.n < self.max_atoms:
            out += list(self.el_ids)
        if st.phase in ("elem", "i", "j") and st.n > 0:
            out += [self.index_of[i] for i in range(st.n)]
        if st.phase == "off":
            out += [t for t, off in self.off_ids.items() if st.i != st.j or any(off)]
        if st.phase == "i" and len(st.covered) == st.n:
            out.append(self.vocab.eos_id)
        return out

    @staticmethod
    def _offset_ok(st: _State, i: int, j: int, off: tuple[int, int, int]) -> bool:
        if i == j and not _positive(off):
            return False
        return not ((i, j) == st.prev[:2] and off <= st.prev[2])

    def _has_offset(self, st: _State, i: int, j: int) -> bool:
        """Whether edge (i, j) can still take an offset (no dead end after choosing it)."""
        if (i, j) != st.prev[:2]:
            return True
        return any(self._offset_ok(st, i, j, off) for off in self.off_ids.values())

    def _sync(self, ids: torch.Tensor) -> None:
        rows = ids.tolist()
        same = (
            self._last is not None
            and ids.shape[0] == self._last.shape[0]
            and ids.shape[1] == self._last.shape[1] + 1
            and torch.equal(ids[:, :-1], self._last)
        )
        if same:
            for st, row in zip(self._states, rows):
                self._step(st, row[-1])
        else:
            self._states = []
            for row in rows:
                st = _State()
                for tid in row:
                    if tid not in (self.vocab.bos_id, self.vocab.pad_id):
                        self._step(st, tid)
                self._states.append(st)
        self._last = ids.clone()

    def __call__(self, ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self._sync(ids)
        mask = torch.ones_like(logits, dtype=torch.bool)
        for b, st in enumerate(self._states):
            ok = self.allowed(st)
            if not ok:  # a dead end (e.g. an edge (i, i) with no offset left): end the string
                ok = [self.vocab.eos_id]
            mask[b, ok] = False
        return logits.masked_fill(mask, float("-inf"))


def _positive(off: tuple[int, int, int]) -> bool:
    for x in off:
        if x:
            return x > 0
    return False
