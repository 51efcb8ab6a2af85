"""`<out>/report.md` for a recipe run: stages, a metrics table, loss curves from each stage's
Lightning CSV logs (`metrics.csv`), and every PNG a stage wrote.

It takes plain records (`StageResult`) and folders, and imports nothing of the project:
the recipe runner imports it, never the other way round.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PLOTS = "plots"


@dataclass
class StageResult:
    """What a recipe stage did: one row of the report's stage table, and its metrics."""

    name: str
    command: str
    status: str  # "ran", "resumed" or "skipped"
    wall_s: float
    metrics: dict


def read_loss_curves(stage_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every `*loss*` column of the stage's CSV logs as (step, value) pairs, sorted by step.
    A resumed fit logs to a new version folder; the versions are merged."""
    curves: dict[str, dict[int, float]] = {}
    for path in sorted(stage_dir.rglob("metrics.csv")):
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                try:
                    step = int(float(row.get("step") or ""))
                except ValueError:
                    continue
                for key, value in row.items():
                    if key and "loss" in key and value not in (None, ""):
                        try:
                            v = float(value)
                        except ValueError:
                            continue
                        if math.isfinite(v):
                            curves.setdefault(key, {})[step] = v
    return {k: sorted(v.items()) for k, v in curves.items()}


def plot_loss_curves(curves: dict[str, list[tuple[int, float]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, points in sorted(curves.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 20 else None, ms=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flatten(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def write_report(
    out: Path, recipe: Path, results: Sequence[StageResult], wall_s: float | None = None
) -> Path:
    """Write `<out>/report.md` (plots under `<out>/plots/`) and return its path."""
    lines = [f"# {recipe.stem}", ""]
    lines.append(f"Recipe `{recipe}`, written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.")
    if wall_s is not None:
        lines.append(f"This invocation took {wall_s:.1f} s.")
    lines += [
        "",
        "## Stages",
        "",
        "| stage | command | status | wall time (s) |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.name} | `seqmodels {r.command}` | {r.status} | {r.wall_s:.1f} |")

    lines += ["", "## Metrics", ""]
    rows = [(r.name, k, v) for r in results for k, v in _flatten(r.metrics)]
    if rows:
        lines += ["| stage | metric | value |", "|---|---|---|"]
        lines += [f"| {s} | {k} | {_fmt(v)} |" for s, k, v in rows]
    else:
        lines.append("No stage reported metrics.")

    for r in results:
        stage_dir = out / r.name
        figures = []
        curves = read_loss_curves(stage_dir)
        if curves:
            plot = out / PLOTS / f"{r.name}_loss.png"
            plot_loss_curves(curves, f"{r.name}: loss", plot)
            figures.append(plot)
        figures += sorted(stage_dir.rglob("*.png"))
        if figures:
            lines += ["", f"## {r.name}", ""]
            lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in figures]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
