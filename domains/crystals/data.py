"""MatterGPT data: SLICES token sequences with normalised property conditions.

mode "lm": ids = bos + SLICES + eos with cond = normalised properties (prefix conditioning);
mode "regression": the same ids with label = normalised properties (property predictor).
Splits are seeded per structure, so augmented copies (random site permutations) of one
crystal never straddle train and test.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from domains.crystals.codec import canonical, encode
from domains.crystals.io import DEFAULT_MAX_ATOMS, read_any, write_skip_log
from domains.crystals.tokenizer import build_vocab, encode_ids
from seqmodels.data import TokenDataModule

DEFAULT_PROPERTIES = {
    "aflow": ["density", "volume_per_atom"],
    "csv": ["formation_energy_per_atom", "band_gap"],
}


def permuted(slices: str, rng: random.Random) -> str:
    """The same crystal with its sites relabelled at random and its edges shuffled."""
    toks = slices.split()
    n = 0
    while n < len(toks) and not toks[n].isdigit():
        n += 1
    perm = list(range(n))
    rng.shuffle(perm)  # new label of old site k is perm[k]
    species = [None] * n
    for k in range(n):
        species[perm[k]] = toks[k]
    edges = []
    for e in range(n, len(toks), 3):
        i, j, off = perm[int(toks[e])], perm[int(toks[e + 1])], toks[e + 2]
        if rng.random() < 0.5:  # reverse the edge: j sees i in the opposite image
            i, j, off = j, i, off.translate(str.maketrans("+-", "-+"))
        edges.append(f"{i} {j} {off}")
    rng.shuffle(edges)
    return " ".join(species + edges)


class CrystalsDataModule(TokenDataModule):
    """SLICES of crystals from AFLOW prototypes (default), a CSV, a CIF or a folder of CIFs."""

    def __init__(
        self,
        source: str = "aflow",
        properties: list[str] | None = None,
        slices_column: str | None = None,
        mode: str = "lm",
        max_atoms: int = 20,
        augment: int = 0,
        method: str = "econnn",
        limit: int | None = None,
        log_dir: str | None = None,
        torch_threads: int | None = None,
        cache_dir: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if mode not in ("lm", "regression"):
            raise ValueError(f"mode must be lm or regression, got {mode!r}")
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)  # small models on a shared CPU: 1 is fastest
        self.source, self.mode, self.max_atoms = source, mode, max_atoms
        kind = "aflow" if source in (None, "aflow") else "csv"
        self.properties = list(properties or DEFAULT_PROPERTIES[kind])
        self.slices_column, self.augment, self.method = slices_column, augment, method
        self.limit, self.log_dir = limit, log_dir
        self.cache_dir = cache_dir
        self.vocab = build_vocab(DEFAULT_MAX_ATOMS)
        self.skipped: list = []

    # ------------------------------------------------------------------ records
    @cached_property
    def records(self) -> list[dict]:
        """[{id, slices, props (raw), structure or None}] for every usable record."""
        if self.slices_column:
            return self._slices_records()
        recs, self.skipped = (
            read_any(
                self.source,
                max_atoms=self.max_atoms,
                limit=self.limit,
                prop_columns=self.properties,
            )
            if str(self.source).endswith(".csv")
            else read_any(self.source, max_atoms=self.max_atoms)
        )
        from domains.crystals.io import Skipped

        cache = EncodingCache(self.source, self.method, self.cache_dir)
        out = []
        for r in recs:
            if any(p not in r.props for p in self.properties):
                self.skipped.append(Skipped(r.id, f"missing properties {self.properties}"))
                continue
            s, why = cache.get(r.id, r.structure)
            if s is None:
                self.skipped.append(Skipped(r.id, f"cannot encode: {why}"))
                continue
            if _n_sites(s) > self.max_atoms:  # a supercell made for bonds longer than a cell
                self.skipped.append(Skipped(r.id, f"{_n_sites(s)} sites after supercell"))
                continue
            props = [r.props[p] for p in self.properties]
            out.append({"id": r.id, "slices": s, "props": props, "structure": r.structure})
        cache.save()
        self._log()
        return out

    def _slices_records(self) -> list[dict]:
        import csv

        from domains.crystals.io import Skipped
        from domains.crystals.slices import check

        out = []
        from domains.crystals.io import resolve

        with open(resolve(self.source), newline="") as fh:
            for k, row in enumerate(csv.DictReader(fh)):
                if self.limit is not None and k >= self.limit:
                    break
                rid = f"{self.source}:row {k}"
                ok, why = check(row[self.slices_column])
                if not ok:
                    self.skipped.append(Skipped(rid, why))
                    continue
                try:
                    props = [float(row[p]) for p in self.properties]
                except (KeyError, ValueError):
                    self.skipped.append(Skipped(rid, f"missing properties {self.properties}"))
                    continue
                s = canonical(row[self.slices_column])
                if len(s.split()) and _n_sites(s) > self.max_atoms:
                    self.skipped.append(Skipped(rid, f"over {self.max_atoms} atoms"))
                    continue
                out.append({"id": rid, "slices": s, "props": props, "structure": None})
        self._log()
        return out

    def _log(self) -> None:
        if self.log_dir and self.skipped:
            Path(self.log_dir).mkdir(parents=True, exist_ok=True)
            write_skip_log(self.skipped, Path(self.log_dir) / "skipped.jsonl")

    # ------------------------------------------------------------------ splits and stats
    @cached_property
    def record_split(self) -> list[str]:
        rng = np.random.default_rng(self.seed)
        perm = rng.permutation(len(self.records))
        n_val = round(len(perm) * self.val_fraction)
        n_test = round(len(perm) * self.test_fraction)
        split = ["train"] * len(perm)
        for rank, i in enumerate(perm):
            split[i] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
        return split

    @cached_property
    def stats(self) -> dict:
        """Mean, std, min and max of each property over the training records."""
        train = np.array(
            [r["props"] for r, s in zip(self.records, self.record_split) if s == "train"]
        )
        std = train.std(0)
        return {
            "names": self.properties,
            "mean": train.mean(0).tolist(),
            "std": np.where(std > 0, std, 1.0).tolist(),
            "min": train.min(0).tolist(),
            "max": train.max(0).tolist(),
        }

    def normalise(self, props) -> list[float]:
        m, s = np.array(self.stats["mean"]), np.array(self.stats["std"])
        return ((np.asarray(props, float) - m) / s).tolist()

    def denormalise(self, z) -> np.ndarray:
        return np.asarray(z, float) * np.array(self.stats["std"]) + np.array(self.stats["mean"])

    def train_structures(self) -> list:
        return [
            r["structure"]
            for r, s in zip(self.records, self.record_split)
            if s == "train" and r["structure"] is not None
        ]

    def train_slices(self) -> list[str]:
        return [r["slices"] for r, s in zip(self.records, self.record_split) if s == "train"]

    # ------------------------------------------------------------------ examples
    def build(self) -> list[dict]:
        rng = random.Random(self.seed)
        out = []
        for r, split in zip(self.records, self.record_split):
            variants = [r["slices"]]
            if split == "train":
                variants += [permuted(r["slices"], rng) for _ in range(self.augment)]
            z = self.normalise(r["props"])
            for v in variants:
                e = {"ids": encode_ids(v, self.vocab), "split": split}
                if self.mode == "lm":
                    e["cond"] = z
                else:
                    e["label"], e["task"] = z, 0
                out.append(e)
        return out

    def describe(self) -> dict:
        return {"records": len(self.records), "skipped": len(self.skipped), **self.stats}


class EncodingCache:
    """SLICES of one structure file's records, kept on disk between runs.

    Canonical encoding costs about 0.05 s per structure (2 minutes for MP-20's mini file),
    paid again by every fit, sweep run and evaluation that reads the same file. The key is
    the file's bytes, the bond method, the source of this package and the versions of
    pymatgen and spglib, so any change to the encoder invalidates it. Only files are cached (the
    embedded AFLOW set is small); `SEQMODELS_CACHE` moves it, `SEQMODELS_CACHE=off` disables.
    """

    def __init__(self, source: Any, method: str, cache_dir: str | None = None):
        import os

        self.method = method
        self.path: Path | None = None
        self.entries: dict[str, list] = {}
        self.seen: set[str] = set()
        self.dirty = False
        root = cache_dir or os.environ.get("SEQMODELS_CACHE", "")
        if root == "off" or source in (None, "aflow"):
            return
        from domains.crystals.io import resolve

        src = resolve(source)
        if not src.is_file():
            return
        self.path = Path(root or Path.home() / ".cache" / "seqmodels") / "crystals"
        self.path /= f"{src.stem}-{self._key(src, method)}.json"
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):  # a torn write: rebuild it
                self.entries = {}

    @staticmethod
    def _key(src: Path, method: str) -> str:
        from importlib.metadata import version

        h = hashlib.sha256(src.read_bytes())
        for f in sorted(Path(__file__).parent.glob("*.py")):
            h.update(f.read_bytes())
        # the encoder's libraries: pymatgen (Niggli, primitive search, neighbours) and
        # spglib (symmetrisation), whose versions can change a string
        h.update(f"{method} {version('pymatgen')} {version('spglib')}".encode())
        return h.hexdigest()[:16]

    def get(self, rid: str, structure) -> tuple[str | None, str]:
        """(SLICES, "") or (None, why it cannot be encoded)."""
        if rid in self.seen:  # an id used twice in one file: its later records are encoded
            return self._encode(structure)
        self.seen.add(rid)
        if rid not in self.entries:
            self.entries[rid] = list(self._encode(structure))
            self.dirty = True
        s, why = self.entries[rid]
        return s, why

    def _encode(self, structure) -> tuple[str | None, str]:
        try:
            return encode(structure, self.method), ""
        except ValueError as err:
            return None, str(err)

    def save(self) -> None:
        if not (self.dirty and self.path):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.entries))
        tmp.replace(self.path)  # atomic: a concurrent reader sees the old or the new file


def _n_sites(slices: str) -> int:
    n = 0
    for t in slices.split():
        if t.isdigit():
            break
        n += 1
    return n
