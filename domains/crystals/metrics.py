"""Generation metrics, one function each; run them on held-out crystals too as the reference.

Validity, coverage (COV-R / COV-P) and the Wasserstein distances of density and number of
elements follow CDVAE's generation benchmark (Xie et al., ICLR 2022; txie-93/cdvae,
scripts/eval_utils.py and compute_metrics.py). Element and space-group distances are
total-variation distances (0 = identical, 1 = disjoint).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Composition, Structure

from domains.crystals.slices import check


def slices_validity(strings: Sequence[str]) -> float:
    """Fraction of strings that parse and describe a connected 3-periodic net."""
    return float(np.mean([check(s)[0] for s in strings])) if strings else 0.0


def reconstruction_rate(structures: Sequence[Structure | None]) -> float:
    """Fraction of decodes that returned a structure."""
    return float(np.mean([s is not None for s in structures])) if structures else 0.0


def is_structurally_valid(s: Structure, min_dist: float = 0.5) -> bool:
    """CDVAE's structure validity: every interatomic distance (minimum image) >= 0.5 A and a
    volume >= 0.1 A^3."""
    vol = s.volume
    if not np.isfinite(vol) or vol < 0.1:
        return False
    if len(s) == 1:
        return True
    d = s.distance_matrix + np.eye(len(s)) * (min_dist + 10.0)
    return float(d.min()) >= min_dist


def structural_validity(structures: Sequence[Structure | None]) -> float:
    """Fraction of all samples (failed decodes count as invalid) that are structurally valid."""
    ok = [s is not None and is_structurally_valid(s) for s in structures]
    return float(np.mean(ok)) if ok else 0.0


def smact_valid(comp: Composition) -> bool:
    """CDVAE's compositional validity (SMACT): one element, or all metals (an alloy), or some
    assignment of SMACT's oxidation states (the 2014 set CDVAE's SMACT used) that is charge
    neutral for the reduced formula, within the formula's largest count, and passes the
    Pauling electronegativity test (assumed passed where electronegativities are missing)."""
    import itertools

    import smact
    from smact.screening import pauling_test

    amounts = comp.get_el_amt_dict()
    symbols = tuple(sorted(amounts, key=lambda e: Composition(e).elements[0].Z))
    counts = np.array([amounts[e] for e in symbols])
    if not np.allclose(counts, np.round(counts)):
        return False  # fractional occupancies: not a formula SMACT can test
    counts = np.round(counts).astype(int)
    counts = counts // np.gcd.reduce(counts)
    if len(symbols) == 1:
        return True
    if all(e in smact.metals for e in symbols):
        return True
    try:
        space = smact.element_dictionary(symbols)
    except (KeyError, NameError):
        return False  # an element SMACT does not know
    elems = [space[e] for e in symbols]
    electronegs = [e.pauling_eneg for e in elems]
    stoichs = [(int(c),) for c in counts]
    for ox in itertools.product(*(e.oxidation_states_smact14 for e in elems)):
        if not smact.neutral_ratios(ox, stoichs=stoichs, threshold=int(counts.max())):
            continue
        try:
            if pauling_test(ox, electronegs):
                return True
        except TypeError:  # no electronegativity data: CDVAE counts it as passing
            return True
    return False


def compositional_validity(structures_or_comps: Sequence) -> float:
    """Fraction of all samples (failed decodes count as invalid) that are SMACT-valid."""
    n = len(structures_or_comps)
    ok = 0
    for x in structures_or_comps:
        if x is not None:
            ok += smact_valid(x.composition if isinstance(x, Structure) else Composition(x))
    return ok / n if n else 0.0


def validity(structures: Sequence[Structure | None]) -> float:
    """CDVAE's `valid`: both structurally and compositionally valid, over all samples."""
    ok = [
        s is not None and is_structurally_valid(s) and smact_valid(s.composition)
        for s in structures
    ]
    return float(np.mean(ok)) if ok else 0.0


def valid_structures(structures: Sequence[Structure | None]) -> list[Structure]:
    return [
        s
        for s in structures
        if s is not None and is_structurally_valid(s) and smact_valid(s.composition)
    ]


def measured_properties(s: Structure) -> dict[str, float]:
    """Properties read off a structure itself (no model): density (g/cm3), volume per atom
    (A^3) and number of elements."""
    return {
        "density": float(s.density),
        "volume_per_atom": float(s.volume / len(s)),
        "n_elements": float(len(s.composition.elements)),
    }


MEASURABLE = ("density", "volume_per_atom")


def wasserstein_distances(samples: Sequence[Structure], reference: Sequence[Structure]) -> dict:
    """CDVAE's wdist_density and wdist_num_elems between valid samples and reference crystals."""
    from scipy.stats import wasserstein_distance

    if not samples or not reference:
        return {"wdist_density": None, "wdist_num_elems": None}
    a = [measured_properties(s) for s in samples]
    b = [measured_properties(s) for s in reference]
    return {
        "wdist_density": float(
            wasserstein_distance([x["density"] for x in a], [x["density"] for x in b])
        ),
        "wdist_num_elems": float(
            wasserstein_distance([x["n_elements"] for x in a], [x["n_elements"] for x in b])
        ),
    }


COV_CUTOFFS = {"struc": 0.4, "comp": 10.0}  # CDVAE's MP-20 thresholds


FINGERPRINT_SECONDS = 10.0  # CrystalNN can search for minutes in a cell with vacuum


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise TimeoutError after `seconds` (SIGALRM; no limit outside the main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _ring(signum, frame):
        raise TimeoutError(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, _ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def fingerprints(structures: Sequence[Structure | None], progress: bool = False):
    """(structure fingerprints, composition fingerprints) as CDVAE computes them: the mean of
    matminer's CrystalNN site fingerprints ("ops" preset) and Magpie element properties; None
    where a structure is missing or its fingerprint fails or takes over FINGERPRINT_SECONDS
    (CDVAE counts a failed fingerprint as invalid)."""
    from matminer.featurizers.composition.composite import ElementProperty
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    site_fp = CrystalNNFingerprint.from_preset("ops")
    comp_fp = ElementProperty.from_preset("magpie")
    it = structures
    if progress:
        from tqdm import tqdm

        it = tqdm(structures, desc="fingerprints")
    struc, comp = [], []
    for s in it:
        if s is None:
            struc.append(None)
            comp.append(None)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with _deadline(FINGERPRINT_SECONDS):
                    fp = np.mean([site_fp.featurize(s, i) for i in range(len(s))], axis=0)
                cf = np.asarray(comp_fp.featurize(s.composition), float)
            except Exception:  # CDVAE counts a failed fingerprint as invalid; so do we
                fp = cf = None
        struc.append(fp)
        comp.append(cf)
    return struc, comp


def coverage(
    sample_fps, reference_fps, comp_scale, cutoffs: dict | None = None
) -> dict[str, float | None]:
    """CDVAE's COV-R (fraction of reference crystals with a sample within both fingerprint
    cutoffs) and COV-P (fraction of all samples within both cutoffs of a reference crystal).

    CDVAE standardises the Magpie features with constants from its MP-20 training set; we
    standardise with the mean and std of our own training split (comp_scale = (mean, std)).
    """
    from scipy.spatial.distance import cdist

    cut = cutoffs or COV_CUTOFFS
    n_samples = len(sample_fps[0])
    keep = [k for k in range(n_samples) if sample_fps[0][k] is not None]
    ref = [k for k in range(len(reference_fps[0])) if reference_fps[0][k] is not None]
    if not keep or not ref:
        return {"cov_recall": None, "cov_precision": None}
    mean, std = comp_scale

    def comp(fps, idx):
        x = (np.array([fps[1][k] for k in idx]) - mean) / std
        return np.nan_to_num(x, nan=0.0)

    s_dist = cdist(
        np.array([sample_fps[0][k] for k in keep]), np.array([reference_fps[0][k] for k in ref])
    )
    c_dist = cdist(comp(sample_fps, keep), comp(reference_fps, ref))
    recall = (s_dist.min(0) <= cut["struc"]) & (c_dist.min(0) <= cut["comp"])
    precision = (s_dist.min(1) <= cut["struc"]) & (c_dist.min(1) <= cut["comp"])
    return {
        "cov_recall": float(recall.mean()),
        "cov_precision": float(precision.sum() / n_samples),
    }


def composition_scale(structures: Sequence[Structure]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (1 where 0) of the Magpie features over structures (the training split)."""
    from matminer.featurizers.composition.composite import ElementProperty

    fp = ElementProperty.from_preset("magpie")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = np.array([fp.featurize(s.composition) for s in structures], float)
    mean, std = np.nanmean(x, 0), np.nanstd(x, 0)
    return np.nan_to_num(mean), np.where(np.nan_to_num(std) > 0, np.nan_to_num(std), 1.0)


def _usable(structures) -> list[Structure]:
    """Structurally valid samples in an LLL-reduced cell: a degenerate cell (a failed fit)
    can make pymatgen's Niggli reduction inside StructureMatcher run for minutes."""
    return [
        s.get_reduced_structure("LLL")
        for s in structures
        if s is not None and is_structurally_valid(s) and min(s.lattice.abc) > 0.5
    ]


def _matcher():
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(ltol=0.3, stol=0.5, angle_tol=10)


def uniqueness(structures: Sequence[Structure | None]) -> float:
    """Distinct structures (StructureMatcher groups) over the structurally valid samples."""
    valid = _usable(structures)
    if not valid:
        return 0.0
    by_formula: dict[str, list[Structure]] = defaultdict(list)
    for s in valid:
        by_formula[s.composition.reduced_formula].append(s)
    sm = _matcher()
    groups = sum(len(sm.group_structures(g)) for g in by_formula.values())
    return groups / len(valid)


def novelty(structures: Sequence[Structure | None], train: Sequence[Structure]) -> float | None:
    """Fraction of structurally valid samples not matched to any training structure; None
    (undefined) without training structures."""
    if not train:
        return None
    valid = _usable(structures)
    if not valid:
        return 0.0
    index: dict[str, list[Structure]] = defaultdict(list)
    for t in train:
        index[t.composition.reduced_formula].append(t)
    sm = _matcher()
    novel = 0
    for s in valid:
        cands = index.get(s.composition.reduced_formula, [])
        novel += not any(sm.fit(s, t) for t in cands)
    return novel / len(valid)


def property_errors(pred: np.ndarray, target: np.ndarray, names: Sequence[str]) -> dict:
    """MAE and MAPE (percent, over targets with |value| > 1e-3) per property."""
    pred, target = np.asarray(pred, float), np.asarray(target, float)
    out = {}
    for k, name in enumerate(names):
        err = pred[:, k] - target[:, k]
        out[f"{name}_mae"] = float(np.abs(err).mean())
        nz = np.abs(target[:, k]) > 1e-3
        out[f"{name}_mape"] = (
            float(100 * np.abs(err[nz] / target[nz, k]).mean()) if nz.any() else None
        )
    return out


def _tv(a: Counter, b: Counter) -> float:
    na, nb = sum(a.values()), sum(b.values())
    if not na or not nb:
        return 1.0
    keys = sorted(set(a) | set(b))  # a fixed order: the same float sum on every run
    return 0.5 * sum(abs(a[k] / na - b[k] / nb) for k in keys)


def element_distance(samples: Sequence[Structure | None], train: Sequence[Structure]) -> float:
    """Total variation between the atom-fraction distributions of elements."""

    def hist(ss):
        c: Counter = Counter()
        for s in ss:
            if s is not None:
                for el, n in s.composition.items():
                    c[el.symbol] += n
        return c

    return _tv(hist(samples), hist(train))


def spacegroup(s: Structure, symprec: float = 0.1) -> int:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        return SpacegroupAnalyzer(s, symprec=symprec).get_space_group_number()
    except Exception:  # spglib fails on degenerate cells: count them as P1
        return 1


def spacegroup_distance(samples: Sequence[Structure | None], train: Sequence[Structure]) -> float:
    """Total variation between the space-group-number distributions (symprec 0.1)."""
    a = Counter(spacegroup(s) for s in _usable(samples))
    b = Counter(spacegroup(s) for s in train)
    return _tv(a, b)
