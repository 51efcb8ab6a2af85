"""Crystal readers: CIF files, folders of CIFs, MP-20-style CSV and pymatgen's AFLOW prototypes.

Every reader returns (records, skipped); a skipped entry names the record and the reason
(unreadable CIF, disordered sites, too many atoms), and `write_skip_log` saves them.
"""

from __future__ import annotations

import csv
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from pymatgen.core import Structure

DEFAULT_MAX_ATOMS = 64


@dataclass
class Record:
    id: str
    structure: Structure
    props: dict[str, float] = field(default_factory=dict)


@dataclass
class Skipped:
    id: str
    reason: str


def _accept(rid: str, structure: Structure, max_atoms: int | None) -> str | None:
    """The reason to skip a structure, or None to keep it."""
    if not structure.is_ordered:
        return "disordered sites (partial occupancy)"
    if max_atoms is not None and len(structure) > max_atoms:
        return f"{len(structure)} atoms, over the limit of {max_atoms}"
    if len(structure) == 0:
        return "no sites"
    return None


def _structures_from_cif_text(text: str) -> list[Structure]:
    """Every data block of a CIF (pymatgen's parser; one structure per block)."""
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parser = CifParser.from_str(text)
        return parser.parse_structures(primitive=False, on_error="raise")


def _from_cif_text(text: str, rid: str, max_atoms, props=None):
    """(records, skipped) of one CIF text: a record per data block (ids `rid#block` when
    there are several), or one skip naming why the CIF cannot be read."""
    try:
        structures = _structures_from_cif_text(text)
    except Exception as err:  # pymatgen raises many types on bad CIFs; report them all
        return [], [Skipped(rid, f"unreadable CIF: {type(err).__name__}: {err}".strip())]
    if not structures:
        return [], [Skipped(rid, "unreadable CIF: no structure in it")]
    records, skipped = [], []
    for k, s in enumerate(structures):
        bid = rid if len(structures) == 1 else f"{rid}#{k}"
        why = _accept(bid, s, max_atoms)
        if why:
            skipped.append(Skipped(bid, why))
        else:
            records.append(Record(bid, s, dict(props or {})))
    return records, skipped


def read_structure_file(path: str | Path, max_atoms: int | None = DEFAULT_MAX_ATOMS):
    """One structure file: CIF (every data block), or any format pymatgen's
    `Structure.from_file` reads (POSCAR/CONTCAR, vasprun.xml, ...). A molecule file (XYZ, ...)
    is skipped as not periodic."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".cif", ".mcif")):
        return _from_cif_text(path.read_text(errors="replace"), str(path), max_atoms)
    if name.endswith((".xyz", ".mol", ".sdf", ".pdb", ".gjf", ".mol2")):
        return [], [Skipped(str(path), "a molecule file, not a periodic crystal")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_file(path)
    except Exception as err:  # every reader raises its own types
        return [], [Skipped(str(path), f"unreadable structure file: {type(err).__name__}: {err}")]
    why = _accept(str(path), s, max_atoms)
    return ([], [Skipped(str(path), why)]) if why else ([Record(str(path), s)], [])


def read_cif(path: str | Path, max_atoms: int | None = DEFAULT_MAX_ATOMS):
    """One CIF file (every data block)."""
    path = Path(path)
    return _from_cif_text(path.read_text(errors="replace"), str(path), max_atoms)


def read_cif_dir(path: str | Path, max_atoms: int | None = DEFAULT_MAX_ATOMS):
    """Every *.cif under a folder, in sorted order."""
    records, skipped = [], []
    for f in sorted(Path(path).rglob("*.cif")):
        r, s = read_cif(f, max_atoms)
        records += r
        skipped += s
    return records, skipped


def read_csv(
    path: str | Path,
    cif_column: str = "cif",
    id_column: str | None = "material_id",
    prop_columns: list[str] | None = None,
    max_atoms: int | None = DEFAULT_MAX_ATOMS,
    limit: int | None = None,
):
    """An MP-20-style CSV: a CIF column plus numeric property columns (all numeric by default)."""
    csv.field_size_limit(sys.maxsize)
    records, skipped = [], []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if cif_column not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no {cif_column!r} column (columns: {reader.fieldnames})")
        for k, row in enumerate(reader):
            if limit is not None and k >= limit:
                break
            rid = row.get(id_column) if id_column else None
            rid = f"{path}:{rid or f'row {k}'}"
            props, bad = {}, None
            for col in prop_columns or [c for c in row if c not in (cif_column, id_column)]:
                try:
                    props[col] = float(row[col])
                except (TypeError, ValueError, KeyError):
                    if prop_columns:  # requested explicitly: a missing value skips the row
                        bad = Skipped(rid, f"property {col!r} is {row.get(col)!r}, not a number")
            if bad:
                skipped.append(bad)
                continue
            recs, skips = _from_cif_text(row[cif_column] or "", rid, max_atoms, props)
            records += recs
            skipped += skips
    return records, skipped


def aflow_prototypes(max_atoms: int | None = DEFAULT_MAX_ATOMS):
    """The 288 AFLOW prototype structures that pymatgen ships, with density and volume/atom."""
    from pymatgen.analysis.prototypes import AFLOW_PROTOTYPE_LIBRARY

    records, skipped = [], []
    for entry in AFLOW_PROTOTYPE_LIBRARY:
        s = entry["snl"].structure
        rid = f"aflow:{entry['tags']['aflow']}"
        why = _accept(rid, s, max_atoms)
        if why:
            skipped.append(Skipped(rid, why))
            continue
        props = {"density": float(s.density), "volume_per_atom": float(s.volume / len(s))}
        records.append(Record(rid, s, props))
    return records, skipped


def resolve(source: str | Path) -> Path:
    """A path; `data:crystals/x.csv` is looked up in the shared data root (SEQMODELS_DATA)."""
    text = str(source)
    if not text.startswith("data:"):
        return Path(text)
    from seqmodels.paths import data_path

    found = data_path(*text[5:].split("/"))
    if found is None:
        from seqmodels.datasets import fetch_hint

        raise FileNotFoundError(f"{text}: not found under the data root; {fetch_hint(text[5:])}")
    return found


def read_any(source: str | Path | None, **kwargs):
    """'aflow' / None (embedded prototypes), a .csv, a structure file or a folder of CIFs."""
    if source in (None, "aflow"):
        return aflow_prototypes(kwargs.get("max_atoms", DEFAULT_MAX_ATOMS))
    p = resolve(source)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if p.is_dir():
        return read_cif_dir(p, kwargs.get("max_atoms", DEFAULT_MAX_ATOMS))
    if p.suffix.lower() == ".csv":
        return read_csv(p, **kwargs)
    return read_structure_file(p, kwargs.get("max_atoms", DEFAULT_MAX_ATOMS))


def write_skip_log(skipped: list[Skipped], path: str | Path) -> None:
    """One JSON line per skipped record: {"id": ..., "reason": ...}."""
    with open(path, "w") as fh:
        for s in skipped:
            fh.write(json.dumps({"id": s.id, "reason": s.reason}) + "\n")
