"""SLICES codec: Structure -> canonical SLICES string -> Structure."""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field

import numpy as np
from pymatgen.core import Structure

from domains.crystals.canonical import canonicalize
from domains.crystals.cell import frames, reduced_cell, wrapped
from domains.crystals.geometry import BondTable, DecodeTimeout, FitOptions, embed
from domains.crystals.neighbors import bond_graph
from domains.crystals.slices import ELEMENTS, SlicesError, SlicesGraph, check, parse

MAX_SUPERCELL = 4
MIN_SITE_DISTANCE = 0.5  # A; closer sites are a broken file, not a crystal


@dataclass
class EncodeInfo:
    slices: str
    n_contacts: int = 0  # contacts added because the bond graph was not 3-periodic
    supercell: tuple[int, int, int] = (1, 1, 1)  # used when a bond spanned > 1 cell
    exact_canonical: bool = True


@dataclass
class DecodeResult:
    structure: Structure | None
    reason: str = "ok"
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.structure is not None


def encode_info(structure: Structure, method: str = "econnn") -> EncodeInfo:
    """Encode with details on what had to be extended (contacts, supercell).

    The bonds are found once in the primitive Niggli cell; the graph is then written in
    every equivalent basis and origin (cell.frames) and the smallest canonical string wins.
    """
    _check_input(structure)
    s = reduced_cell(structure)
    bonds = bond_graph(s, method)
    species = tuple(x.specie.symbol for x in s)
    best, exact = None, True
    for frame in frames(s, bonds.edges):
        graph, ok = canonicalize(SlicesGraph(species, frame.edges))
        key = tuple(map(tuple, graph.edges.tolist()))
        exact &= ok
        if best is None or key < best[0]:
            best = (key, graph)
    if best is not None:
        return EncodeInfo(best[1].to_string(), bonds.n_contacts, (1, 1, 1), exact)
    return _encode_supercell(s, method)


def _check_input(structure: Structure) -> None:
    """Refuse what would encode to a string that cannot mean the input (ValueError)."""
    if not structure.is_ordered:
        raise ValueError("disordered structure: SLICES needs one element per site")
    beyond = sorted({s.specie.symbol for s in structure} - set(ELEMENTS))
    if beyond:
        raise ValueError(f"elements {beyond} are beyond the SLICES vocabulary (Z <= 103)")
    ci, pi, _, dist = structure.get_neighbor_list(MIN_SITE_DISTANCE, exclude_self=True)
    if len(dist):
        k = int(np.argmin(dist))
        raise ValueError(
            f"sites {ci[k]} and {pi[k]} are {dist[k]:.3f} A apart (duplicate or overlapping "
            f"sites; under {MIN_SITE_DISTANCE} A)"
        )


def _encode_supercell(s: Structure, method: str) -> EncodeInfo:
    """No frame keeps every offset within +/-1 (a bond longer than a cell): enlarge the cell
    along those axes, never clamp. Such strings are valid but not cell-invariant."""
    scale = np.ones(3, dtype=int)
    while True:
        bonds = bond_graph(s, method)
        span = np.abs(bonds.edges[:, 2:]).max(axis=0) if len(bonds.edges) else np.zeros(3)
        if (span <= 1).all():
            break
        grow = np.where(span > 1, span, 1).astype(int)
        scale *= grow
        if scale.max() > MAX_SUPERCELL:
            raise ValueError(f"bond offsets up to {span.max()} cells even in a {scale} supercell")
        s = wrapped(s * grow.tolist())
    graph, exact = canonicalize(SlicesGraph(tuple(x.specie.symbol for x in s), bonds.edges))
    return EncodeInfo(graph.to_string(), bonds.n_contacts, tuple(scale.tolist()), exact)


def encode(structure: Structure, method: str = "econnn") -> str:
    """The canonical SLICES string of an ordered structure."""
    return encode_info(structure, method).slices


def canonical(text: str) -> str:
    """The canonical form of any SLICES string (re-labels sites, sorts and orients edges)."""
    return canonicalize(parse(text))[0].to_string()


@functools.cache
def _blas():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_thread_blas():
    """BLAS threads only slow the many tiny fits down (x4 on a busy 2-core machine)."""
    try:
        return _blas().limit(limits=1, user_api="blas")
    except ImportError:
        return contextlib.nullcontext()


def decode(
    text: str,
    table: BondTable | None = None,
    time_limit: float = 10.0,
    relax: str = "none",
    options: FitOptions | None = None,
) -> DecodeResult:
    """Rebuild a Structure; a failure returns its reason instead of raising.

    time_limit (seconds) bounds the whole decode: the fit, then CHGNet relaxation with what
    is left (stopped early with the best geometry so far, `info["relax_stopped"]`)."""
    t0 = time.perf_counter()
    try:
        graph = parse(text)
        ok, reason = check(graph)
        if not ok:
            return DecodeResult(None, reason, time.perf_counter() - t0)
        with single_thread_blas():
            structure = embed(graph, table or BondTable(), time_limit, options)
        info = {}
        if relax == "chgnet":
            from domains.crystals.relax import RelaxRefused, RelaxUnavailable, chgnet_relax

            left = max(time_limit - (time.perf_counter() - t0), 0.0)  # one limit for both
            try:
                structure, info = chgnet_relax(structure, time_limit=left)
            except RelaxUnavailable:
                raise
            except RelaxRefused as err:  # kept unrelaxed, and said so
                info = {"relax_skipped": str(err)}
            except Exception as err:  # a potential's failure must not end a batch
                return DecodeResult(None, f"relax failed: {err}", time.perf_counter() - t0)
        elif relax != "none":
            raise ValueError(f"unknown relax {relax!r}: use none or chgnet")
    except SlicesError as err:
        return DecodeResult(None, str(err), time.perf_counter() - t0)
    except DecodeTimeout:
        return DecodeResult(None, f"time limit of {time_limit} s reached", time.perf_counter() - t0)
    except (ValueError, np.linalg.LinAlgError) as err:
        return DecodeResult(None, f"geometry failed: {err}", time.perf_counter() - t0)
    return DecodeResult(structure, "ok", time.perf_counter() - t0, info)
