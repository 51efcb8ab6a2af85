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
IUPAC_AMBIGUOUS = "RYSWKMBDHV"
# RNA input: U is read as T, as Biopython's Seq.back_transcribe does.
RNA_TO_DNA = {"U": "T"}

_INVALID = 0


class DNAInputError(ValueError):
    """Bad DNA input; the message names the file and the record."""


class DNAInputWarning(UserWarning):
    """Suspicious but readable input (e.g. a record that looks like a protein)."""


@dataclass(frozen=True)
class BasePolicy:
    """How to treat bases other than upper-case A, C, G, T, N.

    ambiguous: IUPAC codes (R, Y, S, W, K, M, B, D, H, V): "n" maps them to N, "reject"
        raises naming the record. U (RNA) is always read as T, as Biopython back-transcribes.
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
        for rna, dna in RNA_TO_DNA.items():
            lut[ord(rna)] = ord(dna)
        if self.ambiguous == "n":
            for b in IUPAC_AMBIGUOUS:
                lut[ord(b)] = ord("N")
        for b in BASES + IUPAC_AMBIGUOUS + "".join(RNA_TO_DNA):
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
    if isinstance(seq, str):
        try:
            raw = seq.encode("latin-1")
        except UnicodeEncodeError as err:  # a character no DNA byte can be
            raise DNAInputError(
                f"{where}: non-DNA character {seq[err.start]!r} at position {err.start}"
            ) from None
    else:
        raw = bytes(seq)
    arr = np.frombuffer(raw, dtype=np.uint8)
    out = _table(policy)[arr]
    bad = np.flatnonzero(out == _INVALID)
    if bad.size:
        i = int(bad[0])
        ch = chr(arr[i])
        raise DNAInputError(
            f"{where}: {_reason(ch, policy)} {ch!r} at position {i} ({bad.size} such in record)"
        )
    return out.tobytes().decode("ascii")


def _reason(ch: str, policy: BasePolicy) -> str:
    """Why `ch` was rejected: the policy that rejected it, else not DNA at all."""
    upper = ch.upper()
    if ch.islower() and upper in BASES + IUPAC_AMBIGUOUS and policy.lowercase == "reject":
        return "lowercase base (policy lowercase='reject')"
    if upper in IUPAC_AMBIGUOUS and policy.ambiguous == "reject":
        kind = "lowercase IUPAC ambiguity code" if ch.islower() else "IUPAC ambiguity code"
        return f"{kind} (policy ambiguous='reject')"
    return "non-DNA character"


_AMBIGUOUS_BYTES = np.zeros(256, dtype=bool)
for _b in IUPAC_AMBIGUOUS:
    _AMBIGUOUS_BYTES[ord(_b)] = _AMBIGUOUS_BYTES[ord(_b.lower())] = True
# A DNA record is mostly A/C/G/T; a protein written in the letters IUPAC shares with DNA
# (A C G T R Y S W K M B D H V N) is mostly ambiguity codes. Above this fraction, warn.
PEPTIDE_FRACTION = 0.25


def ambiguous_fraction(seq: str) -> float:
    """Fraction of IUPAC ambiguity codes (not N) in `seq` (upper or lower case)."""
    arr = np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)
    return float(_AMBIGUOUS_BYTES[arr].mean()) if len(arr) else 0.0


def reverse_complement(seq: str) -> str:
    """Reverse complement of an ACGTN string."""
    return seq.translate(_RC_TRANS)[::-1]


_RC_TRANS = str.maketrans("ACGTNacgtn", "TGCANtgcan")
