"""Readers: FASTA, FASTQ, GenBank (gzipped or not) through Biopython SeqIO, and CSV/TSV with
sequence and label columns. Every error names the file and the record; batch readers can skip
bad records and report them instead of stopping.
"""

from __future__ import annotations

import csv
import gzip
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from domains.dna.alphabet import (
    DEFAULT_POLICY,
    PEPTIDE_FRACTION,
    BasePolicy,
    DNAInputError,
    DNAInputWarning,
    ambiguous_fraction,
    normalize,
)

# Text files are read as UTF-8; "utf-8-sig" also drops a byte-order mark (Excel writes one
# into CSVs, and it would otherwise become part of the first column's name).
ENCODING = "utf-8-sig"

SEQIO_FORMATS = {
    ".fa": "fasta",
    ".fasta": "fasta",
    ".fna": "fasta",
    ".fas": "fasta",
    ".fq": "fastq",
    ".fastq": "fastq",
    ".gb": "genbank",
    ".gbk": "genbank",
    ".genbank": "genbank",
}
TABLE_FORMATS = {".csv": ",", ".tsv": "\t"}


@dataclass
class Record:
    name: str
    seq: str
    label: str | None = None
    source: str = ""
    error: str | None = None  # set by a reader for a malformed record (missing field, ...)


@dataclass
class ReadReport:
    """Bad records met by a lenient read (`on_error='skip'`)."""

    errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.errors)


def detect_format(path: str | Path) -> str:
    """'fasta', 'fastq', 'genbank', 'csv' or 'tsv' from the suffix (a trailing .gz is ignored)."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in SEQIO_FORMATS:
        return SEQIO_FORMATS[ext]
    if ext in TABLE_FORMATS:
        return ext[1:]
    raise DNAInputError(
        f"{path}: cannot tell the format from suffix {ext!r}; "
        f"expected one of {sorted(SEQIO_FORMATS) + sorted(TABLE_FORMATS)} (optionally .gz)"
    )


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise DNAInputError(f"{path}: no such file")
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"  # trust the magic bytes, not the name (bgzf is gzip)
    if gz:
        return gzip.open(path, "rt", encoding=ENCODING, newline="")
    return open(path, encoding=ENCODING, newline="")


def _check(rec: Record, policy: BasePolicy, errors: ReadReport | None) -> Record | None:
    where = f"{rec.source} record {rec.name!r}"
    try:
        if rec.error:
            raise DNAInputError(f"{where}: {rec.error}")
        if not rec.seq:
            raise DNAInputError(f"{where}: record without sequence")
        frac = ambiguous_fraction(rec.seq)
        if frac > PEPTIDE_FRACTION:
            warnings.warn(
                f"{where}: {frac:.0%} IUPAC ambiguity codes; is this a protein sequence?",
                DNAInputWarning,
                stacklevel=3,
            )
        rec.seq = normalize(rec.seq, policy, where)
    except DNAInputError as e:
        if errors is None:
            raise
        errors.errors.append(str(e))
        return None
    return rec


def _read_seqio(path: Path, fmt: str) -> Iterator[Record]:
    from Bio import BiopythonWarning, SeqIO

    with _open_text(path) as fh:
        try:
            with warnings.catch_warnings(record=True) as caught:
                # Biopython's warnings (odd headers, old FASTA comments, ...) are kept and
                # re-issued below naming the file; other warnings pass through untouched.
                warnings.simplefilter("always", BiopythonWarning)
                parsed = [(rec.id or rec.description, str(rec.seq)) for rec in SeqIO.parse(fh, fmt)]
        except UnicodeDecodeError as e:
            raise DNAInputError(f"{path}: not UTF-8 text at byte {e.start}: {e.reason}") from e
        except (ValueError, KeyError) as e:  # SeqIO parse errors (bad FASTQ qualities, ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DNAInputError(f"{path}: not valid {fmt}: {first}") from e
    for w in caught:
        if issubclass(w.category, BiopythonWarning):
            warnings.warn(f"{path}: {w.message}", w.category, stacklevel=2)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for i, (name, seq) in enumerate(parsed):
        yield Record(name=name or f"#{i + 1}", seq=seq, source=str(path))


def _read_table(
    path: Path, delimiter: str, seq_col: str, label_col: str | None
) -> Iterator[Record]:
    with _open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        try:
            rows = list(reader)
            cols = list(reader.fieldnames or [])
        except UnicodeDecodeError as e:
            raise DNAInputError(f"{path}: not UTF-8 text at byte {e.start}: {e.reason}") from e
        except csv.Error as e:
            raise DNAInputError(f"{path}: not valid {path.suffix[1:]} text: {e}") from e
    missing = [c for c in (seq_col, label_col) if c and c not in cols]
    if missing:
        raise DNAInputError(f"{path}: missing column(s) {missing}; columns are {cols}")
    for row_no, row in enumerate(rows, start=2):  # line 1 is the header
        absent = [c for c in (seq_col, label_col) if c and row.get(c) is None]
        name = f"row {row_no}"
        if absent:
            yield Record(name, "", None, str(path), error=f"missing field(s) {absent}")
            continue
        label = row[label_col].strip() if label_col else None
        yield Record(name, row[seq_col].strip(), label, str(path))


def read_records(
    path: str | Path,
    fmt: str | None = None,
    policy: BasePolicy = DEFAULT_POLICY,
    seq_col: str = "seq",
    label_col: str | None = None,
    labels: Sequence[str] | None = None,
    on_error: str = "raise",
    report: ReadReport | None = None,
) -> list[Record]:
    """All records of one file, sequences normalised under `policy`.

    `labels` declares the label set of a table: a label outside it is an error. With
    `on_error='skip'` bad records are left out and listed in `report`.
    """
    path = Path(path)
    fmt = fmt or detect_format(path)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    errors = (report if report is not None else ReadReport()) if on_error == "skip" else None
    if fmt in ("csv", "tsv"):
        raw = _read_table(path, TABLE_FORMATS["." + fmt], seq_col, label_col)
    elif fmt in ("fasta", "fastq", "genbank"):
        raw = _read_seqio(path, fmt)
    else:
        raise DNAInputError(f"{path}: unknown format {fmt!r}")
    out, n_seen = [], 0
    allowed = {str(x) for x in labels} if labels is not None else None
    for rec in raw:
        n_seen += 1
        if allowed is not None and rec.error is None and rec.label not in allowed:
            msg = f"{path} record {rec.name!r}: label {rec.label!r} not in {sorted(allowed)}"
            if errors is None:
                raise DNAInputError(msg)
            errors.errors.append(msg)
            continue
        rec = _check(rec, policy, errors)
        if rec is not None:
            out.append(rec)
    if n_seen == 0:
        raise DNAInputError(f"{path}: empty file, no {fmt} records found")
    return out


def windows(seq: str, size: int, stride: int | None = None, min_len: int = 1) -> list[str]:
    """Cut a long sequence into windows of `size` every `stride` bases (default: `size`).

    The last window is right-aligned to the end so no tail is lost; records shorter than
    `size` give one window if they reach `min_len`.
    """
    stride = stride or size
    if size <= 0 or stride <= 0:
        raise ValueError(f"window size and stride must be positive, got {size}, {stride}")
    if len(seq) <= size:
        return [seq] if len(seq) >= min_len else []
    starts = list(range(0, len(seq) - size + 1, stride))
    if starts[-1] + size < len(seq):
        starts.append(len(seq) - size)
    return [seq[s : s + size] for s in starts]
