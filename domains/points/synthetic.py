"""Synthetic parametric shapes (the embedded default data set, named `synthetic`).

Five classes with random parameters, built as trimesh primitives and sampled uniformly on
the surface: ellipsoids (`sphere`, random semi-axes), `box` (random extents), `torus`
(random tube / ring radius ratio), `cylinder` and `capsule` (random radius / height), each
in its canonical axis-aligned pose, then `shape_bbox`-normalised like real data.
"""

from __future__ import annotations

import numpy as np

from .io import Shape, shape_bbox

CLASSES = ("sphere", "box", "torus", "cylinder", "capsule")


def _mesh(kind: str, rng: np.random.Generator):
    import trimesh

    u = rng.uniform
    if kind == "sphere":
        mesh = trimesh.creation.icosphere(subdivisions=3)
        mesh.apply_scale(u(0.5, 1.0, size=3))
        return mesh
    if kind == "box":
        return trimesh.creation.box(extents=u(0.3, 1.0, size=3))
    if kind == "torus":
        return trimesh.creation.torus(
            major_radius=1.0, minor_radius=u(0.15, 0.5), major_sections=48, minor_sections=24
        )
    if kind == "cylinder":
        return trimesh.creation.cylinder(radius=u(0.2, 0.6), height=u(0.5, 2.0), sections=48)
    if kind == "capsule":
        return trimesh.creation.capsule(radius=u(0.2, 0.5), height=u(0.3, 1.5), count=[24, 24])
    raise ValueError(f"unknown synthetic class {kind!r} (known: {', '.join(CLASSES)})")


def make_shapes(
    n_per_class: int = 100,
    n_points: int = 1024,
    classes: tuple[str, ...] = CLASSES,
    seed: int = 0,
) -> list[Shape]:
    """`n_per_class` shapes of every class, interleaved by class, reproducible from `seed`."""
    import trimesh

    rng = np.random.default_rng(seed)
    shapes = []
    for i in range(n_per_class):
        for kind in classes:
            mesh = _mesh(kind, rng)
            pts, _ = trimesh.sample.sample_surface(mesh, n_points, seed=rng)
            shapes.append(Shape(f"synthetic/{kind}_{i:04d}", shape_bbox(np.asarray(pts)), kind))
    return shapes
