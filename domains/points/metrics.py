"""Point-set distances and the PointFlow generation protocol (torch on CPU).

Definitions follow PointFlow's `metrics/evaluation_metrics.py` (Yang et al., ICCV 2019):

- Chamfer distance CD(X, Y) = mean_x min_y |x-y|^2 + mean_y min_x |x-y|^2 (squared
  distances, no square root, each direction averaged), as `distChamfer` + `dl.mean + dr.mean`.
- EMD(X, Y) = mean over points of |x - T(x)| (Euclidean) under the optimal bijection T, for
  equal-size sets. PointFlow uses an approximate CUDA matcher; we compute the *exact*
  assignment with scipy's `linear_sum_assignment` on a random subset of `emd_points` points
  of each cloud (exact OT on a subset, the same subset for every pair of a shape).
- With M_rs the (reference x sample) distance matrix:
  MMD = mean over references of the distance to the closest sample;
  COV = fraction of references that are the nearest reference of at least one sample;
  1-NNA = leave-one-out 1-nearest-neighbour accuracy of telling samples from references
  in the union (50% ideal, 100% = separable), PointFlow's `knn(M_rr, M_rs, M_ss, 1)`.
"""

from __future__ import annotations

import numpy as np
import torch

CHUNK_PAIRS = 2  # pairs per brute-force block: small blocks stay in cache (measured fastest)


def chamfer_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Paired Chamfer distance (B,) of clouds x (B, N, 3) and y (B, M, 3); differentiable.

    The nearest neighbours are found without autograd and the
    loss is the squared distance of the N + M matched pairs: the same value and the same
    (sub)gradient as min over the full distance matrix, but backward touches N + M pairs,
    not N x M (cdist's backward over the full matrix cost ~70% of a tokenizer step)."""
    with torch.no_grad():
        # argmin_j |x_i - y_j|^2 = argmin_j (|y_j|^2 - 2 x_i.y_j): one product per direction,
        # each reduced along its last (contiguous) axis, ~2x faster than one matrix
        # reduced along both axes
        a, b = x.detach(), y.detach()
        to_y = torch.baddbmm(b.square().sum(-1)[:, None], a, b.transpose(1, 2), alpha=-2)
        to_x = torch.baddbmm(a.square().sum(-1)[:, None], b, a.transpose(1, 2), alpha=-2)
        to_y, to_x = to_y.argmin(dim=2), to_x.argmin(dim=2)  # (B, N) into y, (B, M) into x
    near_y = y.gather(1, to_y[..., None].expand(-1, -1, y.shape[-1]))
    near_x = x.gather(1, to_x[..., None].expand(-1, -1, x.shape[-1]))
    return (x - near_y).square().sum(-1).mean(1) + (y - near_x).square().sum(-1).mean(1)


def _as_tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float32)) if not torch.is_tensor(a) else a.float()


@torch.no_grad()
def chamfer_matrix_torch(a, b, chunk_pairs: int = CHUNK_PAIRS) -> torch.Tensor:
    """All-pairs Chamfer distances (len(a), len(b)) by brute force in torch: blocks of shapes
    compared with one matrix product each (|x|^2 + |y|^2 - 2 x.y, as PointFlow's
    distChamfer), memory bounded by `chunk_pairs` pairwise-distance blocks. The fast path
    on an accelerator; on CPU the KD-tree path below is several times faster."""
    a, b = _as_tensor(a), _as_tensor(b)
    (na, n, _), (nb, m, _) = a.shape, b.shape
    cb = max(1, min(nb, chunk_pairs))
    ca = max(1, chunk_pairs // cb)
    an, bn = a.square().sum(-1), b.square().sum(-1)
    out = torch.empty(na, nb, device=a.device)
    for i in range(0, na, ca):
        ai, ain = a[i : i + ca], an[i : i + ca]
        for j in range(0, nb, cb):
            bj, bjn = b[j : j + cb], bn[j : j + cb]
            dot = ai.reshape(-1, 3) @ bj.reshape(-1, 3).T  # (ca*n, cb*m)
            d = ain.reshape(-1, 1) + bjn.reshape(1, -1) - 2 * dot
            d = d.clamp_min_(0).view(len(ai), n, len(bj), m)
            out[i : i + ca, j : j + cb] = d.amin(3).mean(1) + d.amin(1).mean(2)
    return out


def chamfer_matrix(a, b, backend: str = "kdtree", progress: bool = False) -> torch.Tensor:
    """All-pairs Chamfer distances (len(a), len(b)) of clouds a (A, N, 3) and b (B, M, 3).

    `kdtree` (default): exact nearest neighbours with scipy's cKDTree, one tree per cloud
    built once, so each pair costs two O(N log M) queries instead of an N x M block (7x
    the brute-force throughput on the 2-core CPU, see bench/points.py); `torch`: the
    chunked brute-force path. When a is b only the upper triangle is computed."""
    if backend == "torch":
        return chamfer_matrix_torch(a, b)
    if backend != "kdtree":
        raise ValueError(f"unknown Chamfer backend {backend!r} (kdtree, torch)")
    from scipy.spatial import cKDTree

    same = a is b
    a = np.asarray(a.cpu() if torch.is_tensor(a) else a, dtype=np.float64)
    b = a if same else np.asarray(b.cpu() if torch.is_tensor(b) else b, dtype=np.float64)
    trees_a = [cKDTree(x) for x in a]
    trees_b = trees_a if same else [cKDTree(y) for y in b]
    out = np.zeros((len(a), len(b)))
    rows = range(len(a))
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, desc="chamfer matrix", unit="shape")
    for i in rows:
        for j in range(i + 1 if same else 0, len(b)):
            d_ab = trees_b[j].query(a[i])[0]
            d_ba = trees_a[i].query(b[j])[0]
            out[i, j] = np.square(d_ab).mean() + np.square(d_ba).mean()
    if same:
        out = out + out.T
    return torch.from_numpy(out).float()


def emd_exact(x: np.ndarray, y: np.ndarray) -> float:
    """Exact EMD of two equal-size clouds: mean Euclidean distance under the optimal matching."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if len(x) != len(y):
        raise ValueError(f"EMD needs equal-size sets ({len(x)} vs {len(y)} points)")
    cost = cdist(x, y)
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def emd_matrix(a, b, progress: bool = False) -> torch.Tensor:
    """All-pairs exact EMD of equal-size clouds (upper triangle only when a is b)."""
    same = a is b
    a = np.asarray(a, dtype=np.float64)
    b = a if same else np.asarray(b, dtype=np.float64)
    out = np.zeros((len(a), len(b)))
    rows = range(len(a))
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, desc="EMD matrix", unit="shape")
    for i in rows:
        for j in range(i + 1 if same else 0, len(b)):
            out[i, j] = emd_exact(a[i], b[j])
    if same:
        out = out + out.T
    return torch.from_numpy(out).float()


def subsample(clouds, n: int, seed: int = 0) -> np.ndarray:
    """A random subset of `n` points of every cloud (seeded)."""
    clouds = np.asarray(clouds)
    rng = np.random.default_rng(seed)
    return np.stack([c[rng.choice(len(c), min(n, len(c)), replace=False)] for c in clouds])


def mmd_cov(m_rs: torch.Tensor) -> dict[str, float]:
    """MMD and COV from the (reference x sample) distance matrix (PointFlow's lgan_mmd_cov)."""
    mmd = m_rs.min(dim=1).values.mean().item()
    nearest_ref = m_rs.argmin(dim=0)  # for every sample, its closest reference
    cov = nearest_ref.unique().numel() / m_rs.shape[0]
    return {"MMD": mmd, "COV": cov}


def one_nna(m_rr: torch.Tensor, m_rs: torch.Tensor, m_ss: torch.Tensor) -> float:
    """Leave-one-out 1-NN accuracy over references (label 1) and samples (label 0)."""
    n_r, n_s = m_rs.shape
    full = torch.cat([torch.cat([m_rr, m_rs], 1), torch.cat([m_rs.T, m_ss], 1)], 0)
    full = full + torch.diag(torch.full((n_r + n_s,), float("inf")))
    label = torch.cat([torch.ones(n_r), torch.zeros(n_s)])
    pred = label[full.argmin(dim=0)]
    return (pred == label).float().mean().item()


def pointflow_metrics(
    samples,
    refs,
    emd: bool = False,
    emd_points: int = 256,
    progress: bool = False,
    ref_matrices: dict | None = None,
) -> dict[str, float]:
    """MMD-CD, COV-CD, 1-NNA-CD (and the EMD variants when `emd`) of generated clouds
    against reference clouds, both (count, points, 3) and already normalised.
    `ref_matrices` ({"CD": M_rr, "EMD": M_rr}) caches the reference-reference matrices
    across calls with the same references (filled when given empty)."""
    out = {}
    samples, refs = np.asarray(samples, dtype=np.float32), np.asarray(refs, dtype=np.float32)
    kinds = [("CD", samples, refs, chamfer_matrix)]
    if emd:
        kinds.append(
            ("EMD", subsample(samples, emd_points), subsample(refs, emd_points, 1), emd_matrix)
        )
    for name, smp, ref, dist in kinds:
        cache = ref_matrices if ref_matrices is not None else {}
        if name not in cache:
            cache[name] = dist(ref, ref, progress=progress)
        if len(smp) > 1 and bool((smp == smp[:1]).all()):
            # one cloud repeated (the single-shape baseline): every column of M_rs is the
            # same and M_ss is zero, so one column gives the same figures at 1/(2n+1) the cost
            m_rs = dist(ref, smp[:1]).expand(-1, len(smp)).contiguous()
            m_ss = torch.zeros(len(smp), len(smp))
        else:
            m_rs, m_ss = dist(ref, smp, progress=progress), dist(smp, smp, progress=progress)
        m_rr = cache[name]
        mc = mmd_cov(m_rs)
        out[f"MMD-{name}"] = mc["MMD"]
        out[f"COV-{name}"] = mc["COV"]
        out[f"1-NNA-{name}"] = one_nna(m_rr, m_rs, m_ss)
    return out


def train_copy_oracle(
    train,
    refs,
    n: int | None = None,
    seed: int = 0,
    emd: bool = False,
    emd_points: int = 256,
    ref_matrices: dict | None = None,
) -> dict[str, float]:
    """The metrics of a 'generator' that returns `n` random training shapes unchanged: the
    figure a model that memorised its training set would get (reported beside every
    generation figure; below it, a model is beating copies of real shapes)."""
    train = np.asarray(train)
    n = n or len(refs)
    idx = np.random.default_rng(seed).choice(len(train), min(n, len(train)), replace=False)
    return pointflow_metrics(train[idx], refs, emd, emd_points, ref_matrices=ref_matrices)
