"""Base alphabet and the explicit policy for IUPAC ambiguity codes and lowercase bases.

Normalisation is a 256-entry byte lookup table applied with numpy, so it runs at memory
speed; a Python loop over characters would cap tokenization at a few M bases/s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BASES = "ACGTN"
COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A", "N": "N"}
# IUPAC ambiguity codes other than N (N is a token of its own).
IUPAC_AMBIGUOUS = "RYSWKMBDHVU"

_INVALID = 0


class DNAInputError(ValueError):
    """Bad DNA input; the message names the file and the record."""


@dataclass(frozen=True)
class BasePolicy:
    """How to treat bases other than upper-case A, C, G, T, N.

    ambiguous: IUPAC codes (R, Y, S, W, K, M, B, D, H, V, U): "n" maps them to N, "reject"
        raises naming the record.
    lowercase: soft-masked bases: "upper" keeps the base, "n" maps it to N, "reject" raises.
    Any other character (digits, '-', '*', ...) is always rejected.
    """

    ambiguous: str = "n"
    lowercase: str = "upper"

    def __post_init__(self) -> None:
        if self.ambiguous not in ("n", "reject"):
            raise ValueError(f"ambiguous policy must be 'n' or 'reject', got {self.ambiguous!r}")
        if self.lowercase not in ("upper", "n", "reject"):
            raise ValueError(
                f"lowercase policy must be 'upper', 'n' or 'reject', got {self.lowercase!r}"
            )

    def table(self) -> np.ndarray:
        """Byte -> canonical byte (one of ACGTN), or 0 for a rejected byte."""
        lut = np.zeros(256, dtype=np.uint8)
        for b in BASES:
            lut[ord(b)] = ord(b)
        if self.ambiguous == "n":
            for b in IUPAC_AMBIGUOUS:
                lut[ord(b)] = ord("N")
        for b in BASES + IUPAC_AMBIGUOUS:
            lo, up = ord(b.lower()), lut[ord(b)]
            if self.lowercase == "upper":
                lut[lo] = up
            elif self.lowercase == "n" and up:
                lut[lo] = ord("N")
        return lut


DEFAULT_POLICY = BasePolicy()
_TABLES: dict[BasePolicy, np.ndarray] = {}


def _table(policy: BasePolicy) -> np.ndarray:
    if policy not in _TABLES:
        _TABLES[policy] = policy.table()
    return _TABLES[policy]


def normalize(
    seq: str | bytes, policy: BasePolicy = DEFAULT_POLICY, where: str = "<sequence>"
) -> str:
    """Upper-case ACGTN string under `policy`; raises DNAInputError naming `where`."""
    raw = seq.encode("latin-1") if isinstance(seq, str) else bytes(seq)
    arr = np.frombuffer(raw, dtype=np.uint8)
    out = _table(policy)[arr]
    bad = np.flatnonzero(out == _INVALID)
    if bad.size:
        i = int(bad[0])
        ch = chr(arr[i])
        why = (
            "IUPAC ambiguity code (policy ambiguous='reject')"
            if ch.upper() in IUPAC_AMBIGUOUS and not ch.islower()
            else "lowercase base (policy lowercase='reject')"
            if ch.islower() and ch.upper() in BASES + IUPAC_AMBIGUOUS
            else "non-DNA character"
        )
        raise DNAInputError(f"{where}: {why} {ch!r} at position {i} ({bad.size} such in record)")
    return out.tobytes().decode("ascii")


def reverse_complement(seq: str) -> str:
    """Reverse complement of an ACGTN string."""
    return seq.translate(_RC_TRANS)[::-1]


_RC_TRANS = str.maketrans("ACGTNacgtn", "TGCANtgcan")
