"""`seqmodels scale`: scaling laws from one recipe's training stage.

A grid of model sizes (width d; depth and heads from a rule, not hand-written configs) and
token budgets, each run as an ordinary, resumable fit stage of the recipe; then the
Chinchilla form that Gadre et al. (2024, "Language models scale reliably with
over-training and on downstream tasks") fit to small runs,

    L(N, D) = E + A N^-alpha + B D^-beta          (Hoffmann et al. 2022, approach 3)

with N the non-embedding parameters and D the training tokens (real, non-pad tokens the
objective saw), fitted as they do: Huber loss (delta 1e-3) on log L, L-BFGS from a grid of
starting points. Also L(C) = E + A C^-gamma with C = 6 N D over the compute frontier.
Confidence intervals: bootstrap over runs. Self-check: fit without the largest size,
predict its runs, report the relative error.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HEAD_DIM = 32  # width rule: heads of 32 channels (nanoGPT / GPT-2 use 64; our models are small)
DEPTH_PER_WIDTH = 32  # depth rule: one layer per 32 channels, at least 2 (aspect ratio ~32)
HUBER_DELTA = 1e-3


@dataclass
class Run:
    d_model: int
    n_layers: int
    n_heads: int
    tokens: int  # requested budget
    steps: int
    params: int  # non-embedding parameters (N)
    seen_tokens: int  # D: steps x measured real tokens per step
    val_loss: float | None = None

    @property
    def name(self) -> str:
        return f"d{self.d_model}-t{self.tokens}"

    @property
    def compute(self) -> float:
        return 6.0 * self.params * self.seen_tokens


def shape_for_width(d_model: int) -> tuple[int, int]:
    """(n_layers, n_heads) for a width: the one rule every size of a sweep follows."""
    if d_model < 16 or d_model % 16:
        raise ValueError(f"width {d_model}: use a multiple of 16, at least 16")
    heads = max(1, d_model // HEAD_DIM)
    while d_model % heads:
        heads -= 1
    return max(2, round(d_model / DEPTH_PER_WIDTH)), heads


def backbone_params(backbone: str, d_model: int, n_layers: int, n_heads: int, **kw) -> int:
    """Non-embedding parameters (Kaplan et al. 2020): the backbone alone, no embedding/head."""
    from .backbones import BACKBONES

    net = BACKBONES[backbone](d_model=d_model, n_layers=n_layers, n_heads=n_heads, **kw)
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------- the fits


def law_nd(theta: np.ndarray, n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """L(N, D) for theta = (log E, log A, log B, alpha, beta)."""
    e, a, b, alpha, beta = theta
    return np.exp(e) + np.exp(a) * n ** (-alpha) + np.exp(b) * d ** (-beta)


def law_c(theta: np.ndarray, c: np.ndarray) -> np.ndarray:
    """L(C) for theta = (log E, log A, gamma)."""
    e, a, gamma = theta
    return np.exp(e) + np.exp(a) * c ** (-gamma)


def _fit(residuals, starts) -> np.ndarray:
    """Least squares with a Huber loss (delta 1e-3 on log-loss residuals, as Hoffmann et al.
    2022 fit), from each starting point; the best optimum wins."""
    from scipy.optimize import least_squares

    best, best_cost = None, math.inf
    for x0 in starts:
        try:
            res = least_squares(residuals, np.asarray(x0, float), loss="huber", f_scale=HUBER_DELTA)
        except ValueError:  # residuals not finite at this start
            continue
        if np.isfinite(res.cost) and res.cost < best_cost:
            best, best_cost = res.x, res.cost
    if best is None:
        raise ValueError("the scaling-law fit did not converge from any starting point")
    return best


def _log_residuals(law, logl, *xs):
    def residuals(theta):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            r = logl - np.log(law(theta, *xs))
        return np.where(np.isfinite(r), r, 1e3)

    return residuals


def fit_nd(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, start: np.ndarray | None = None
) -> np.ndarray:
    """Fit L(N, D); N and D are rescaled to their geometric means for conditioning. `start`
    (a previous fit, raw units) replaces the grid of starting points (bootstrap refits)."""
    n0, d0 = np.exp(np.log(n).mean()), np.exp(np.log(d).mean())
    floor = float(np.log(loss.min()))
    if start is None:
        grid = itertools.product(
            [floor - 2.0, floor - 0.5], [-2.0, 0.0], [-2.0, 0.0], [0.3, 0.7], [0.3, 0.7]
        )
    else:
        e, a, b, alpha, beta = start
        grid = [[e, a - alpha * np.log(n0), b - beta * np.log(d0), alpha, beta]]
    e, a, b, alpha, beta = _fit(_log_residuals(law_nd, np.log(loss), n / n0, d / d0), grid)
    # Back to raw units: A (N/n0)^-alpha = A n0^alpha N^-alpha.
    return np.array([e, a + alpha * np.log(n0), b + beta * np.log(d0), alpha, beta])


def fit_c(c: np.ndarray, loss: np.ndarray) -> np.ndarray:
    c0 = np.exp(np.log(c).mean())
    floor = float(np.log(loss.min()))
    grid = itertools.product([floor - 2.0, floor - 0.5], [-2.0, 0.0], [0.1, 0.3, 0.6])
    e, a, gamma = _fit(_log_residuals(law_c, np.log(loss), c / c0), grid)
    return np.array([e, a + gamma * np.log(c0), gamma])


def frontier(c: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of runs no cheaper run beats (the compute-efficient frontier), by compute."""
    order = np.argsort(c)
    keep, best = [], math.inf
    for i in order:
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.array(keep)


def nd_summary(theta: np.ndarray) -> dict[str, float]:
    e, a, b, alpha, beta = theta
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def bootstrap_nd(
    n: np.ndarray, d: np.ndarray, loss: np.ndarray, rounds: int = 200, seed: int = 0
) -> list[np.ndarray]:
    """Fits on runs resampled with replacement, each started from the fit on all runs (a
    resample of fewer than 5 distinct runs, which cannot pin 5 parameters, is drawn again)."""
    rng = np.random.default_rng(seed)
    full = fit_nd(n, d, loss)
    fits = []
    while len(fits) < rounds:
        idx = rng.integers(0, len(loss), len(loss))
        if len(set(idx.tolist())) < 5:
            continue
        fits.append(fit_nd(n[idx], d[idx], loss[idx], start=full))
    return fits


def _ci(values: list[float]) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def analyse(runs: list[Run], rounds: int = 200, seed: int = 0) -> dict:
    """Fit both laws on every run, bootstrap them, and predict the largest size from the rest."""
    done = [r for r in runs if r.val_loss is not None and math.isfinite(r.val_loss)]
    if len(done) < 6:
        raise ValueError(f"{len(done)} finished runs: a 5-parameter fit needs at least 6")
    n = np.array([r.params for r in done], float)
    d = np.array([r.seen_tokens for r in done], float)
    loss = np.array([r.val_loss for r in done], float)
    c = 6 * n * d
    theta = fit_nd(n, d, loss)
    boots = bootstrap_nd(n, d, loss, rounds, seed)
    names = ["E", "A", "B", "alpha", "beta"]
    ci = {k: _ci([nd_summary(t)[k] for t in boots]) for k in names}
    front = frontier(c, loss)
    theta_c = fit_c(c[front], loss[front]) if len(front) >= 3 else None
    out = {
        "fit": nd_summary(theta),
        "fit_ci95": ci,
        "fit_rmse_rel": float(np.sqrt(np.mean((law_nd(theta, n, d) / loss - 1) ** 2))),
        "bootstrap_rounds": rounds,
    }
    if theta_c is not None:
        out["fit_compute"] = {
            "E": math.exp(theta_c[0]),
            "A": math.exp(theta_c[1]),
            "gamma": float(theta_c[2]),
            "frontier_runs": [done[i].name for i in front],
        }
    # Self-check: hold out the largest size, fit the rest, predict it.
    largest = max(r.params for r in done)
    train = [i for i, r in enumerate(done) if r.params < largest]
    held = [i for i, r in enumerate(done) if r.params == largest]
    if len(train) >= 6:
        t_small = fit_nd(n[train], d[train], loss[train])
        b_small = bootstrap_nd(n[train], d[train], loss[train], rounds, seed)
        max_c_train = float(c[train].max())
        rows = []
        for i in held:
            pred = float(law_nd(t_small, n[i : i + 1], d[i : i + 1])[0])
            boot = [float(law_nd(t, n[i : i + 1], d[i : i + 1])[0]) for t in b_small]
            row = {
                "run": done[i].name,
                "measured": float(loss[i]),
                "predicted": pred,
                "predicted_ci95": _ci(boot),
                "rel_error": abs(pred - loss[i]) / loss[i],
                "compute_vs_largest_fitted": float(c[i] / max_c_train),
            }
            # The trivial baseline beside the fit: the largest fitted size's loss at the same
            # token budget (what "more parameters change nothing" predicts).
            same = [j for j in train if done[j].tokens == done[i].tokens]
            if same:
                j = max(same, key=lambda j: n[j])
                row["baseline_same_budget"] = float(loss[j])
                row["baseline_rel_error"] = abs(loss[j] - loss[i]) / loss[i]
            rows.append(row)
        out["extrapolation"] = {
            "fitted_sizes": sorted({done[i].d_model for i in train}),
            "held_out_size": done[held[0]].d_model,
            "runs": rows,
            "max_rel_error": max(r["rel_error"] for r in rows),
        }
    return out


# ---------------------------------------------------------------- the sweep


def _measure_tokens_per_step(config: dict, batches: int = 20) -> float:
    """Mean real (non-pad) tokens per training batch of the stage's datamodule."""
    import pytorch_lightning as pl
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(pl.LightningDataModule, "data")
    cfg = parser.parse_object({"data": config["data"]})
    dm = parser.instantiate_classes(cfg).data
    dm.setup("fit")
    counts = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i >= batches:
            break
        pad = batch.get("pad")
        tokens = batch["ids"] if "ids" in batch else batch["x"]
        counts.append(
            float(pad.sum()) if pad is not None else float(tokens.shape[0] * tokens.shape[1])
        )
    if not counts:
        raise ValueError("the stage's datamodule yields no training batches")
    return sum(counts) / len(counts)


def plan(config: dict, sizes: list[int], tokens: list[int], tokens_per_step: float) -> list[Run]:
    model = config.get("model", {}).get("init_args", {})
    backbone = model.get("backbone", "transformer")
    kw = {"max_len": model.get("max_len", 512), **(model.get("backbone_args") or {})}
    runs = []
    for d in sizes:
        layers, heads = shape_for_width(d)
        n = backbone_params(backbone, d, layers, heads, **kw)
        for t in tokens:
            steps = max(1, math.ceil(t / tokens_per_step))
            runs.append(Run(d, layers, heads, t, steps, n, int(steps * tokens_per_step)))
    return runs


def run_config(base: dict, run: Run) -> dict:
    """The stage's config with this run's shape and budget; validation once, at the end."""
    cfg = copy.deepcopy(base)
    init = cfg.setdefault("model", {}).setdefault("init_args", {})
    init.update(d_model=run.d_model, n_layers=run.n_layers, n_heads=run.n_heads)
    if "max_steps" in init:
        init["max_steps"] = run.steps
    if "warmup_steps" in init:
        init["warmup_steps"] = min(int(init["warmup_steps"]), max(1, run.steps // 5))
    trainer = cfg.setdefault("trainer", {})
    trainer.update(max_steps=run.steps, max_epochs=-1, check_val_every_n_epoch=None)
    trainer["val_check_interval"] = run.steps
    ckpt = cfg.setdefault("checkpoint", {})
    ckpt["every_n_train_steps"] = max(1, min(int(ckpt.get("every_n_train_steps", 200)), run.steps))
    return cfg


def plot(runs: list[Run], result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fit = result["fit"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len({r.d_model for r in runs})))
    for color, d in zip(colors, sorted({r.d_model for r in runs})):
        rs = sorted(
            (r for r in runs if r.d_model == d and r.val_loss is not None), key=lambda r: r.compute
        )
        if not rs:
            continue
        ax.plot(
            [r.compute for r in rs],
            [r.val_loss for r in rs],
            "o",
            color=color,
            label=f"d={d} (N={rs[0].params:,})",
        )
        dd = np.geomspace(
            min(r.seen_tokens for r in rs) / 2, max(r.seen_tokens for r in rs) * 2, 50
        )
        n = float(rs[0].params)
        pred = fit["E"] + fit["A"] * n ** -fit["alpha"] + fit["B"] * dd ** -fit["beta"]
        ax.plot(6 * n * dd, pred, "-", color=color, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 3.9, not 3.9 x 10^0
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("compute C = 6 N D (FLOPs)")
    ax.set_ylabel("validation loss")
    ax.set_title("L(N, D) fit (lines) and runs (points)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(runs: list[Run], result: dict, out: Path, recipe: str, stage: str) -> Path:
    fit, ci = result["fit"], result["fit_ci95"]
    lines = [
        f"# Scaling sweep: {recipe}, stage {stage}",
        "",
        "L(N, D) = E + A N^-alpha + B D^-beta (Hoffmann et al. 2022 form, fitted as Gadre et al. "
        "2024 do: Huber on log L). N: non-embedding parameters; D: real tokens seen.",
        "",
        "| parameter | fit | 95% bootstrap CI |",
        "|---|---|---|",
        *[f"| {k} | {fit[k]:.4g} | {ci[k][0]:.4g} .. {ci[k][1]:.4g} |" for k in fit],
        "",
        f"Relative RMS error of the fit over the runs: {result['fit_rmse_rel']:.2%}.",
        "",
    ]
    if "fit_compute" in result:
        fc = result["fit_compute"]
        lines += [
            f"L(C) = {fc['E']:.4g} + {fc['A']:.4g} C^-{fc['gamma']:.4g} over the compute frontier "
            f"({len(fc['frontier_runs'])} runs).",
            "",
        ]
    if "extrapolation" in result:
        ex = result["extrapolation"]
        lines += [
            f"## Self-check: fit on widths {ex['fitted_sizes']}, predict width {ex['held_out_size']}",
            "",
            "| run | compute vs largest fitted | measured | predicted (95% CI) | error | "
            "baseline: largest fitted size, same budget (error) |",
            "|---|---|---|---|---|---|",
            *[
                f"| {r['run']} | {r['compute_vs_largest_fitted']:.1f}x | {r['measured']:.4f} | "
                f"{r['predicted']:.4f} ({r['predicted_ci95'][0]:.4f} .. {r['predicted_ci95'][1]:.4f}) "
                f"| {r['rel_error']:.2%} | "
                + (
                    f"{r['baseline_same_budget']:.4f} ({r['baseline_rel_error']:.2%}) |"
                    if "baseline_same_budget" in r
                    else "- |"
                )
                for r in ex["runs"]
            ],
            "",
        ]
    lines += [
        "## Runs",
        "",
        "| run | layers x width (heads) | N | steps | D | C | val loss |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r.name} | {r.n_layers} x {r.d_model} ({r.n_heads}) | {r.params:,} | {r.steps} | "
            f"{r.seen_tokens:,} | {r.compute:.3g} | "
            f"{'-' if r.val_loss is None else f'{r.val_loss:.4f}'} |"
            for r in runs
        ],
        "",
        "![loss vs compute](scale.png)",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def cmd_scale(args: argparse.Namespace) -> dict:
    from .commands import CLIError
    from .recipes import Stage, load_recipe, run_stage

    out = Path(args.out)
    recipe = args.recipe or args.recipe_flag
    if not recipe:
        raise CLIError("scale: name the recipe (seqmodels scale RECIPE --stage NAME ...)")
    stages = load_recipe(recipe, out / "prep")
    names = [s.name for s in stages]
    if args.stage not in names:
        raise CLIError(f"{recipe}: no stage {args.stage!r} (stages: {', '.join(names)})")
    target = stages[names.index(args.stage)]
    if target.command != ["fit"] or target.config is None:
        raise CLIError(f"{recipe}: stage {args.stage!r} is not a fit stage with a config")
    for s in stages[: names.index(args.stage)]:  # what the training stage reads (data, tokenizers)
        run_stage(s, out / "prep")
    tps = _measure_tokens_per_step(target.config)
    runs = plan(target.config, args.sizes, args.tokens, tps)
    print(f"scale: {len(runs)} runs, {tps:.0f} real tokens per step", flush=True)
    for i, run in enumerate(runs, 1):
        print(
            f"scale: run {i}/{len(runs)} {run.name}: {run.n_layers} x {run.d_model}, {run.steps} steps"
        )
        stage = Stage(
            run.name, ["fit"], run_config(target.config, run), dict(target.args), dict(target.env)
        )
        res = run_stage(stage, out / "runs")
        loss = res.metrics.get("val/loss")
        run.val_loss = float(loss) if loss is not None else None
    result = analyse(runs, rounds=args.bootstrap)
    result["runs"] = [{**asdict(r), "name": r.name, "compute": r.compute} for r in runs]
    result["tokens_per_step"] = tps
    (out / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(runs, result, out / "scale.png")
    report = write_report(runs, result, out, recipe, args.stage)
    print(f"wrote {out / 'scale.json'}, {out / 'scale.png'} and {report}")
    metrics = {f"fit/{k}": v for k, v in result["fit"].items()}
    if "extrapolation" in result:
        metrics["extrapolation/max_rel_error"] = result["extrapolation"]["max_rel_error"]
    return metrics
