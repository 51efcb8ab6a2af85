"""The evaluation pipeline behind `seqmodels crystals evaluate`: decode sampled SLICES, write
CIFs, score the structures, and run the same pipeline on held-out test crystals.

Properties are measured on the decoded structures wherever they can be (density, volume
per atom); formation energy also from CHGNet on the decoded structure when asked
(`chgnet/...`, a CHGNet-model figure; formation.py); a property only a model can give comes
from the string-reading predictor and its keys say so (`predictor/...`).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

from domains.crystals import metrics as M
from domains.crystals.codec import canonical, decode
from domains.crystals.geometry import BondTable
from domains.crystals.slices import SlicesError


class SamplesError(ValueError):
    """A samples file that cannot be read (names the file and line)."""


def read_samples(path: str | Path, n_props: int) -> tuple[list[list[float]], list[str]]:
    """(targets, SLICES) from a samples TSV written by `crystals generate`."""
    p = Path(path)
    if not p.is_file():
        raise SamplesError(f"{p}: samples file not found")
    targets, strings = [], []
    for k, line in enumerate(p.read_text().splitlines()[1:]):
        cols = line.split("\t")
        if len(cols) != n_props + 1:
            raise SamplesError(f"{p}: line {k + 2} has {len(cols)} columns, expected {n_props + 1}")
        try:
            targets.append([float(x) for x in cols[:n_props]])
        except ValueError as err:
            raise SamplesError(f"{p}: line {k + 2}: {err}") from err
        strings.append(cols[-1])
    return targets, strings


def string_uniqueness(strings: Sequence[str]) -> float:
    """Distinct crystal graphs among the strings (compared through `canonical()`)."""
    forms = []
    for s in strings:
        try:
            forms.append(canonical(s))
        except SlicesError:
            forms.append(None)
    kept = [f for f in forms if f is not None]
    return len(set(kept)) / len(strings) if strings else 0.0


def predict_properties(ckpt: str, strings: list[str], dm) -> list[list[float] | None]:
    """Properties read from the SLICES tokens by the finetuned predictor (a proxy model that
    never sees a structure); None where a string does not tokenize."""
    import torch

    from domains.crystals.tokenizer import encode_ids
    from seqmodels.checkpoint import load_module
    from seqmodels.data import collate

    model = load_module(ckpt)
    out: list = [None] * len(strings)
    rows = []
    for k, s in enumerate(strings):
        try:
            rows.append((k, encode_ids(s, dm.vocab)))
        except SlicesError:
            continue
    with torch.no_grad():
        for b in range(0, len(rows), 64):
            chunk = rows[b : b + 64]
            batch = collate([{"ids": ids} for _, ids in chunk], dm.vocab.pad_id)
            (_, pred), *_ = model(batch).values()
            for (k, _), z in zip(chunk, dm.denormalise(pred.numpy()).tolist()):
                out[k] = z
    return out


def property_metrics(structures, targets, names, predicted=None) -> tuple[dict, list]:
    """Errors against the targets: measured on the structure where the property can be
    (MEASURABLE), else from the predictor under `predictor/`. Returns (metrics, the value
    used per sample and property, None where missing) for the plot."""
    out: dict = {}
    used = [[None] * len(names) for _ in structures]
    for p, name in enumerate(names):
        if name in M.MEASURABLE:
            # a collapsed or overlapping geometry has no meaningful density: valid ones only
            vals = [
                M.measured_properties(s)[name]
                if s is not None and M.is_structurally_valid(s)
                else None
                for s in structures
            ]
            prefix = ""
        elif predicted is not None:
            vals = [row[p] if row is not None and s is not None else None
                    for row, s in zip(predicted, structures)]  # fmt: skip
            prefix = "predictor/"
        else:
            continue
        keep = [k for k, v in enumerate(vals) if v is not None]
        for k in keep:
            used[k][p] = vals[k]
        if keep:
            err = M.property_errors(
                np.array([[vals[k]] for k in keep]),
                np.array([[targets[k][p]] for k in keep]),
                [name],
            )
            out.update({f"{prefix}{k}": v for k, v in err.items()})
    return out, used


def sample_metrics(
    strings: list[str],
    structures: list[Structure | None],
    targets: list[list[float]],
    dm,
    train: list[Structure],
    reference: list[Structure],
    predictor: str | None = None,
    fps: dict | None = None,
) -> tuple[dict, list]:
    """Every metric of one set of samples; `reference` are the true held-out crystals
    (CDVAE's ground truth for coverage and the Wasserstein distances)."""
    valid = M.valid_structures(structures)
    m = {
        "n": len(strings),
        "slices_validity": M.slices_validity(strings),
        "string_uniqueness": string_uniqueness(strings),
        "reconstruction_rate": M.reconstruction_rate(structures),
        "structural_validity": M.structural_validity(structures),
        "compositional_validity": M.compositional_validity(structures),
        "validity": M.validity(structures),
        "uniqueness": M.uniqueness(structures),
        "novelty": M.novelty(structures, train),
        "element_tv_distance": M.element_distance(structures, train),
        "spacegroup_tv_distance": M.spacegroup_distance(structures, train),
        **M.wasserstein_distances(valid, reference),
    }
    if fps is not None:
        sample_fps = M.fingerprints(structures, progress=True)
        m.update(M.coverage(sample_fps, fps["reference"], fps["scale"]))
    predicted = predict_properties(predictor, strings, dm) if predictor else None
    props, used = property_metrics(structures, targets, dm.properties, predicted)
    m.update(props)
    return m, used


def decode_all(strings, table, out_dir: Path | None, time_limit: float, relax: str, tag: str):
    """Decode every string (progress bar); write CIFs into out_dir; count failure reasons.
    Returns (structures, reasons, CHGNet energies per atom where relax="chgnet" gave one)."""
    from tqdm import tqdm

    structs, reasons, energies = [], Counter(), []
    for k, s in enumerate(tqdm(strings, desc=f"decode {tag}")):
        res = decode(s, table, time_limit, relax=relax)
        structs.append(res.structure)
        energies.append(res.info.get("energy_per_atom"))
        if not res.ok:
            reasons[re.split(r"[:(]", res.reason)[0].strip()] += 1
        elif out_dir is not None:
            res.structure.to(filename=str(out_dir / f"{k:05d}.cif"))
    return structs, reasons, energies


FORMATION_KEY = "formation_energy_per_atom"  # MP-20's column name


def chgnet_formation(structures, energies, refs, time_limit: float, tag: str) -> list:
    """CHGNet formation energy (eV/atom) of each structurally valid structure, else None."""
    from tqdm import tqdm

    from domains.crystals.formation import formation_energy

    out = []
    for s, e in tqdm(list(zip(structures, energies)), desc=f"CHGNet formation energy {tag}"):
        ok = s is not None and M.is_structurally_valid(s)
        out.append(formation_energy(s, refs, time_limit, e)[0] if ok else None)
    return out


def formation_all(sets: dict, train, props, out: Path, time_limit: float) -> dict:
    """chgnet/... metrics for each named set of (structures, energies, targets rows)."""
    from domains.crystals.formation import ElementReferences, formation_metrics

    refs = ElementReferences(out / "chgnet_element_refs.json")
    needed = {e.symbol for structs, _, _ in sets.values() for s in structs if s is not None
              for e in s.composition.elements}  # fmt: skip
    refs.add_known(s for s in train if {e.symbol for e in s.composition.elements} <= needed)
    col = props.index(FORMATION_KEY) if FORMATION_KEY in props else None
    metrics, rows = {}, []
    for name, (structs, energies, targets) in sets.items():
        vals = chgnet_formation(structs, energies, refs, time_limit, name)
        tgt = [t[col] for t in targets] if col is not None else None
        prefix = "" if name == "samples" else f"{name}/"
        metrics.update({prefix + k: v for k, v in formation_metrics(vals, tgt).items()})
        rows += [f"{name}\t{k}\t{'' if v is None else f'{v:.4f}'}" for k, v in enumerate(vals)]
    (out / "chgnet_formation.tsv").write_text("set\tindex\tformation_energy_eV_per_atom\n"
                                               + "\n".join(rows) + "\n")  # fmt: skip
    return metrics


def evaluate_samples(
    samples: str,
    dm,
    out: Path,
    predictor: str | None = None,
    relax: str = "none",
    time_limit: float = 5.0,
    reference_n: int = 100,
    coverage: bool = True,
    formation: bool = False,
) -> dict:
    """The whole pipeline; writes cifs/, bond_table.json, metrics.json and the plot.

    formation: CHGNet formation energies of the samples, of the reference decodes and of the
    true held-out crystals (`truth/chgnet/...`: CHGNet's own error against the DFT labels,
    the yardstick), each relaxation bounded by time_limit; chgnet_formation.tsv per sample."""
    (out / "cifs").mkdir(parents=True, exist_ok=True)
    targets, strings = read_samples(samples, len(dm.properties))
    train = dm.train_structures()
    table = BondTable.fit(train, dm.method) if train else BondTable()
    table.save(out / "bond_table.json")
    test = [r for r, s in zip(dm.records, dm.record_split) if s == "test"][:reference_n]
    truth = [r["structure"] for r in test if r["structure"] is not None]
    fps = None
    if coverage and truth and train:
        fps = {"reference": M.fingerprints(truth), "scale": M.composition_scale(train)}

    structures, reasons, energies = decode_all(
        strings, table, out / "cifs", time_limit, relax, "samples"
    )
    gen, used = sample_metrics(strings, structures, targets, dm, train, truth, predictor, fps)
    # reference: the held-out test crystals' own strings through the same pipeline
    ref_strings = [r["slices"] for r in test]
    ref_structs, _, ref_energies = decode_all(
        ref_strings, table, None, time_limit, relax, "reference"
    )
    ref, _ = sample_metrics(
        ref_strings, ref_structs, [r["props"] for r in test], dm, train, truth, predictor, fps
    )
    metrics = {**gen, **{f"reference/{k}": v for k, v in ref.items()}}
    metrics.update({f"decode_fail/{r}": n for r, n in reasons.items()})
    if formation:
        ref_targets = [r["props"] for r in test]
        sets = {
            "samples": (structures, energies, targets),
            "reference": (ref_structs, ref_energies, ref_targets),
            "truth": (truth, [None] * len(truth),
                      [r["props"] for r in test if r["structure"] is not None]),
        }  # fmt: skip
        metrics.update(formation_all(sets, train, dm.properties, out, time_limit))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    plot(targets, used, dm.properties, out / "generated_vs_target.png")
    return metrics


def plot(targets, values, names, path: Path) -> None:
    """Target vs measured (or predicted, for properties no structure gives) per property."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4))
    axes = [axes] if len(names) == 1 else axes
    for k, (ax, name) in enumerate(zip(axes, names)):
        pts = [(t[k], v[k]) for t, v in zip(targets, values) if v[k] is not None]
        if pts:
            x, y = zip(*pts)
            ax.scatter(x, y, s=10, alpha=0.6)
            lo, hi = min(x + y), max(x + y)
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        source = "measured" if name in M.MEASURABLE else "predicted (string model)"
        ax.set_xlabel(f"target {name}")
        ax.set_ylabel(f"{source} {name} of generated")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
