"""SLICES tokens (elements, site indices, offsets) and the SLICES grammar as a logits processor.

The vocabulary is fixed (specials, elements up to Lr, site indices 0..max_atoms-1, the 27
offset words), so every model of a given max_atoms shares ids. The grammar follows the
canonical form: elements in canonical order, then edges `i j XYZ` with i <= j, sorted,
no duplicate, self-edges with a positive offset, eos only when the quotient graph is one
component whose cycles span 3 dimensions; a sampled string that ends therefore passes
`check()` by construction.
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


def _positive_first(off: tuple[int, int, int]) -> bool:
    for x in off:
        if x:
            return x > 0
    return False


def _oriented(i: int, j: int, t: tuple[int, int, int]) -> tuple:
    if i > j or (i == j and not _positive_first(t)):
        return (j, i, -t[0], -t[1], -t[2])
    return (i, j, *t)


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


_POSITIVE = tuple(sorted(v for v in _OFFSET_VALUE.values() if _positive_first(v)))


def _independent(basis: list[tuple[int, int, int]], v: tuple[int, int, int]) -> bool:
    """Whether integer vector v is outside the span of basis (exact integer arithmetic)."""
    if not any(v):
        return False
    if not basis:
        return True
    if len(basis) == 1:
        a = basis[0]
        return any(
            (a[1] * v[2] - a[2] * v[1], a[2] * v[0] - a[0] * v[2], a[0] * v[1] - a[1] * v[0])
        )
    if len(basis) == 2:
        (a, b) = basis
        cross = (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])
        return cross[0] * v[0] + cross[1] * v[1] + cross[2] * v[2] != 0
    return False


def _rank_with(basis: list, extra) -> int:
    b = list(basis)
    for v in extra:
        if len(b) == 3:
            break
        if _independent(b, v):
            b.append(v)
    return len(b)


class _State:
    """One row: sites so far, the last edge, and a union-find over sites whose potentials
    are image offsets (as in slices.periodicity), so connectivity and the rank of the cycle
    lattice are known after every edge."""

    __slots__ = ("n", "last_el", "phase", "i", "j", "prev", "parent", "pot", "top", "basis",
                 "edges", "done")  # fmt: skip

    def __init__(self):
        self.n = 0
        self.last_el = None  # element_key of the last element
        self.phase = "elem"  # elem -> (i j off)* ; "j" after i, "off" after j, "i" after off
        self.i = self.j = -1
        self.prev = (-1, -1, (-2, -2, -2))
        self.parent: list[int] = []
        self.pot: list[tuple[int, int, int]] = []  # offset of a site relative to its parent
        self.top: dict[int, int] = {}  # root -> largest site index in its component
        self.basis: list[tuple[int, int, int]] = []  # independent cycle offsets (rank)
        self.edges: set[tuple] = set()  # oriented edges so far (no duplicates)
        self.done = False

    def add_site(self) -> None:
        self.parent.append(self.n)
        self.pot.append((0, 0, 0))
        self.top[self.n] = self.n
        self.n += 1

    def find(self, i: int) -> tuple[int, tuple[int, int, int]]:
        acc = (0, 0, 0)
        while self.parent[i] != i:
            p = self.pot[i]
            acc = (acc[0] + p[0], acc[1] + p[1], acc[2] + p[2])
            i = self.parent[i]
        return i, acc

    def add_edge(self, i: int, j: int, t: tuple[int, int, int]) -> None:
        self.edges.add(_oriented(i, j, t))
        ri, pi = self.find(i)
        rj, pj = self.find(j)
        v = (pi[0] + t[0] - pj[0], pi[1] + t[1] - pj[1], pi[2] + t[2] - pj[2])
        if ri == rj:
            if len(self.basis) < 3 and _independent(self.basis, v):
                self.basis.append(v)
        else:
            self.parent[rj], self.pot[rj] = ri, v
            self.top[ri] = max(self.top[ri], self.top.pop(rj))

    @property
    def complete(self) -> bool:
        """One component whose cycles span 3 dimensions: a decodable crystal net."""
        return self.n > 0 and len(self.top) == 1 and len(self.basis) == 3


class SlicesGrammar:
    """fn(ids (B, T), logits (B, V)) -> logits with -inf on tokens the grammar forbids.

    eos is allowed only when the quotient graph is connected and 3-periodic, and (canonical
    mode) no choice is allowed after which that can no longer be reached, so every string
    that ends with eos passes `check()`; only the length budget can cut one short.
    """

    def __init__(self, vocab: Vocab, max_atoms: int | None = None, canonical: bool = True):
        """canonical=False enforces the syntax, no duplicate edges and eos only on a valid net
        (for models trained on permuted strings)."""
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
            st.add_site()
            st.last_el = self.el_ids[tid]
        elif tid in self.idx_ids and st.phase in ("elem", "i"):
            st.i, st.phase = self.idx_ids[tid], "j"
        elif tid in self.idx_ids:
            st.j, st.phase = self.idx_ids[tid], "off"
        elif tid in self.off_ids:
            st.prev = (st.i, st.j, self.off_ids[tid])
            st.add_edge(st.i, st.j, self.off_ids[tid])
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
                # sorted edges: i never decreases, and sites below i can gain no more bonds,
                # so i may not pass the last site of any component (it could never join)
                hi = min(st.top.values()) if len(st.top) > 1 else st.n - 1
                for i in range(max(pi, 0), hi + 1):
                    lo = pj if i == pi else i
                    if any(self._has_offsets(st, i, j) for j in range(lo, st.n)):
                        out.append(self.index_of[i])
            if st.phase == "i" and st.complete:
                out.append(self.vocab.eos_id)
        elif st.phase == "j":
            lo = pj if st.i == pi else st.i
            out += [self.index_of[j] for j in range(lo, st.n) if self._has_offsets(st, st.i, j)]
        else:  # offset
            out += self._offsets(st, st.i, st.j)
        return out

    def _has_offsets(self, st: _State, i: int, j: int) -> bool:
        if (i, j) != st.prev[:2] and not (i == j == st.n - 1 and len(st.basis) < 3):
            return True  # a fresh pair: every offset of the right orientation is open
        return bool(self._offsets(st, i, j))

    def _offsets(self, st: _State, i: int, j: int) -> list[int]:
        """Offset tokens for edge (i, j) in canonical order that leave the net completable."""
        prev = st.prev
        out = []
        last = i == j == st.n - 1 and len(st.basis) < 3  # only self-edges of it remain
        for tid, off in self.off_ids.items():
            if i == j and not _positive_first(off):
                continue
            if (i, j) == prev[:2] and off <= prev[2]:
                continue
            if last and _rank_with(st.basis, [off, *(u for u in _POSITIVE if u > off)]) < 3:
                continue  # the remaining larger self-offsets could not complete the rank
            out.append(tid)
        return out

    def _allowed_syntax(self, st: _State) -> list[int]:
        out: list[int] = []
        if st.phase == "elem" and st.n < self.max_atoms:
            out += list(self.el_ids)
        if st.phase in ("elem", "i", "j") and st.n > 0:
            out += [self.index_of[i] for i in range(st.n)]
        if st.phase == "off":
            out += [
                t
                for t, off in self.off_ids.items()
                if (st.i != st.j or any(off)) and _oriented(st.i, st.j, off) not in st.edges
            ]
        if st.phase == "i" and st.complete:
            out.append(self.vocab.eos_id)
        return out

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
