"""Matplotlib pictures of point clouds: a grid of shapes, one row per group."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def render_grid(
    rows: list[tuple[str, list[np.ndarray]]],
    path: str | Path,
    titles: list[list[str]] | None = None,
    size: float = 1.8,
    point_size: float = 1.5,
) -> Path:
    """One row per (label, clouds); z up, a fixed oblique view, axes hidden."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max(len(c) for _, c in rows)
    fig = plt.figure(figsize=(size * n_cols, size * len(rows)))
    for r, (label, clouds) in enumerate(rows):
        for c, pts in enumerate(clouds):
            ax = fig.add_subplot(len(rows), n_cols, r * n_cols + c + 1, projection="3d")
            pts = np.asarray(pts)
            ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=point_size, c=pts[:, 2], cmap="viridis")
            ax.set_xlim(-1, 1), ax.set_ylim(-1, 1), ax.set_zlim(-1, 1)
            ax.set_box_aspect((1, 1, 1))
            ax.view_init(elev=20, azim=-60)
            ax.set_axis_off()
            title = titles[r][c] if titles else (label if c == 0 else "")
            if title:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
