"""`seqmodels em ...`: synthetic data, affinity finetuning + evaluation, run comparison."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from seqmodels.commands import CLIError, add_flag

DEFAULT_BACKBONE = {
    "backbone": "mamba",
    "d_model": 96,
    "n_layers": 3,
    "backbone_args": {"bidirectional": True},
}


def _cli_error(err: Exception):
    return CLIError(str(err))


def _source_flags(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--source", default="synthetic", help="synthetic, isbi, or a volume path")
    add_flag(p, "--key", default=None, help="dataset key inside an HDF5 / Zarr file")
    add_flag(p, "--labels", default=None, help="instance labels for a volume path")
    add_flag(p, "--labels-key", default=None)
    add_flag(p, "--voxel-size", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"))
    add_flag(p, "--synthetic-shape", type=int, nargs=3, default=[48, 128, 128])
    add_flag(p, "--synthetic-cells", type=int, default=40)
    add_flag(p, "--seed", type=int, default=0)


def _load(args):
    from .data import load_source

    em = load_source(
        args.source,
        args.key,
        args.labels,
        args.labels_key,
        args.voxel_size,
        synthetic_shape=tuple(args.synthetic_shape),
        synthetic_cells=args.synthetic_cells,
        seed=args.seed,
    )
    if em.labels is None:
        raise ValueError(f"{args.source}: segmentation needs instance labels (--labels)")
    return em


def _eval_flags(p: argparse.ArgumentParser) -> None:
    add_flag(p, "--threshold", type=float, default=0.5, help="merge while affinity > this")
    add_flag(
        p,
        "--seed-threshold",
        type=float,
        default=0.9,
        help="watershed seeds: regions with mean affinity > this",
    )
    add_flag(
        p,
        "--tune-sections",
        type=int,
        nargs=2,
        default=None,
        metavar=("START", "STOP"),
        help="labelled sections on which to pick both thresholds (not the test ones)",
    )
    add_flag(p, "--method", default="auto", choices=["auto", "waterz", "skimage"])
    add_flag(p, "--scoring", default="mean", help="waterz merge score: mean, median, quantile:Q")
    add_flag(p, "--name", default=None, help="run name in figures")
    add_flag(p, "--out", required=True, help="folder for metrics.json and figures")


def _evaluate(model, em, sections, args, out: Path, t_train: float | None = None) -> dict:
    """Segment `sections`, score them, and score the tuned intensity-threshold baseline
    on the same sections (its threshold picked on the tuning sections too)."""
    from .data import section_range
    from .evaluate import boundary_figure, evaluate_volume, tune_watershed, write_json
    from .segmentation import metrics, threshold_segmentation, tune_threshold_baseline

    ws = {"method": args.method, "threshold": args.threshold, "seed_threshold": args.seed_threshold,
          "scoring": args.scoring}  # fmt: skip
    base_t = 0.5
    if args.tune_sections:
        tl = section_range(em.raw.shape[0], args.tune_sections, em.name)
        ws = tune_watershed(model, em.raw[tl], em.labels[tl], em.per_section, args.method,
                            args.scoring)  # fmt: skip
        base_t = tune_threshold_baseline(em.raw[tl], em.labels[tl], em.per_section)["threshold"]
    sl = section_range(em.raw.shape[0], sections, em.name)
    raw, lab = em.raw[sl], em.labels[sl]
    t = time.perf_counter()
    m, aff, seg = evaluate_volume(model, raw, lab, em.per_section, ws)
    m["eval_s"] = time.perf_counter() - t
    if t_train is not None:
        m["train_s"] = t_train
    m["sections"] = f"{sl.start}:{sl.stop}"
    m.update({f"ws_{k}": v for k, v in ws.items()})
    base = metrics(lab, threshold_segmentation(raw, base_t, em.per_section))
    m.update({f"baseline_{k}": v for k, v in base.items()})
    m["baseline_threshold"] = base_t
    name = args.name or out.name
    boundary_figure(
        raw, aff, seg, lab, out / f"boundaries_{name}.png", f"{name} ({em.name})", z_offset=sl.start
    )
    write_json(out / "metrics.json", m)
    print(json.dumps(m))
    return m


def _check_sections(args, n: int, name: str) -> None:
    """Explicit, disjoint train / tune / test sections: never train and score on the same
    sections by default."""
    from .data import check_disjoint

    if args.train_sections is None or args.test_sections is None:
        raise ValueError(
            f"{name}: pass --train-sections and --test-sections (disjoint; e.g. ISBI "
            "--train-sections 0 14 --tune-sections 14 22 --test-sections 22 30)"
        )
    check_disjoint(
        {"train": args.train_sections, "tune": args.tune_sections, "test": args.test_sections},
        name,
    )


def _finetune_one(args, em, seed: int, out: Path) -> dict:
    import pytorch_lightning as pl

    from seqmodels.checkpoint import save_atomic

    from .data import section_range
    from .finetune import AffinityModel, train_affinities

    pre = None if args.pretrained in (None, "", "none") else args.pretrained
    cfg = json.loads(args.backbone_config) if args.backbone_config else DEFAULT_BACKBONE
    # Seeded before any weight exists: every arm of a comparison starts from the same
    # random state (fresh decoder, fresh backbone for scratch).
    pl.seed_everything(seed, workers=True)
    model = AffinityModel(
        args.crop,
        args.patch,
        offsets=_offsets(args.offsets),
        channels=args.channels,
        kernel=tuple(args.kernel),
        per_section=em.per_section,
        pretrained=pre,
        backbone_config=None if pre else cfg,
        lr=args.lr,
        backbone_lr=args.backbone_lr,
        freeze_fraction=args.freeze_fraction,
        layer_lr_decay=args.layer_lr_decay,
        max_steps=args.steps,
        warmup_steps=min(20, args.steps // 5 + 1),
    )
    sl = section_range(em.raw.shape[0], args.train_sections, em.name)
    t = time.perf_counter()
    train_affinities(
        model, em.raw[sl], em.labels[sl], args.steps, args.batch_size, out, seed, args.augment
    )
    t_train = time.perf_counter() - t
    save_atomic(model.checkpoint(), out / "affinity.ckpt")
    m = _evaluate(model, em, args.test_sections, args, out, t_train)
    m["pretrained"] = pre or "none"
    m["seed"] = seed
    return m


def _offsets(spec: str) -> list:
    from .segmentation import LONG_RANGE, OFFSETS

    if spec == "nearest":
        return list(OFFSETS)
    if spec == "long":
        return [*OFFSETS, *LONG_RANGE]
    return json.loads(spec)


SUMMARY_KEYS = ("voi_split", "voi_merge", "voi", "arand", "baseline_voi", "baseline_arand")


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation (ddof 1 when more than one run) over seeds."""
    out: dict = {"n_seeds": len(runs), "seeds": [r["seed"] for r in runs]}
    for k in SUMMARY_KEYS:
        v = np.array([r[k] for r in runs], dtype=np.float64)
        out[k] = float(v.mean())
        out[f"{k}_sd"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    out["per_seed"] = runs
    return out


def cmd_finetune(args: argparse.Namespace) -> dict:
    from .evaluate import write_json

    out = Path(args.out)
    try:
        em = _load(args)
        _check_sections(args, em.raw.shape[0], em.name)
        seeds = args.seeds if args.seeds else [args.seed]
        runs = []
        for seed in seeds:
            sub = out / f"seed_{seed}" if len(seeds) > 1 else out
            runs.append(_finetune_one(args, em, seed, sub))
    except ValueError as err:
        raise _cli_error(err) from err
    if len(seeds) == 1:
        return {**runs[0], **{f"{k}_sd": 0.0 for k in SUMMARY_KEYS}, "n_seeds": 1}
    m = summarise(runs)
    m["pretrained"] = runs[0]["pretrained"]
    write_json(out / "metrics.json", m)
    lines = [
        "| seed | VOI | VOI split | VOI merge | ARAND | baseline VOI |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['seed']} | {r['voi']:.4f} | {r['voi_split']:.4f} | {r['voi_merge']:.4f} | "
              f"{r['arand']:.4f} | {r['baseline_voi']:.4f} |" for r in runs]  # fmt: skip
    lines.append(f"| mean +- sd | {m['voi']:.4f} +- {m['voi_sd']:.4f} | | | "
                 f"{m['arand']:.4f} +- {m['arand_sd']:.4f} | {m['baseline_voi']:.4f} |")  # fmt: skip
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return {k: v for k, v in m.items() if k != "per_seed"}


def load_affinity_model(path: str):
    from seqmodels.checkpoint import load_checkpoint

    from .finetune import AffinityModel

    ckpt = load_checkpoint(path)
    if "affinity_args" not in ckpt:
        raise ValueError(f"{path}: not an affinity model (written by `seqmodels em finetune`)")
    model = AffinityModel(**ckpt["affinity_args"])
    model.load_state_dict(ckpt["state_dict"])
    return model


def cmd_evaluate(args: argparse.Namespace) -> dict:
    try:
        from .data import check_disjoint

        check_disjoint({"tune": args.tune_sections, "scored": args.sections}, args.model)
        model = load_affinity_model(args.model)
        em = _load(args)
        return _evaluate(model, em, args.sections, args, Path(args.out))
    except ValueError as err:
        raise _cli_error(err) from err


def cmd_compare(args: argparse.Namespace) -> dict:
    """Metrics of several finetuning runs side by side, and VOI (split + merge) changes."""
    from .evaluate import compare_figure, write_json

    rows = {}
    for item in args.runs:
        name, _, folder = item.partition("=")
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise _cli_error(ValueError(f"{path}: no metrics (run `seqmodels em finetune`)"))
        m = json.loads(path.read_text())
        rows[name] = {k: m[k] for k in ("voi_split", "voi_merge", "voi", "arand")}
        rows[name].update({k: m[k] for k in ("voi_sd", "baseline_voi", "n_seeds") if k in m})
    out = Path(args.out)
    result: dict = dict(rows)
    if args.baseline:
        if args.baseline not in rows:
            raise _cli_error(ValueError(f"baseline {args.baseline!r} is not one of {list(rows)}"))
        base = rows[args.baseline]["voi"]
        for name, r in rows.items():
            if name != args.baseline:
                # Positive = lower VOI than the baseline (better), as a fraction of it.
                result[f"voi_gain_{name}_vs_{args.baseline}"] = (base - r["voi"]) / base
    names = list(rows)
    if len(names) >= 2 and args.baseline in names:
        others = [n for n in names if n != args.baseline]
        if len(others) == 2:
            a, b = others
            result[f"voi_gain_{a}_vs_{b}"] = (rows[b]["voi"] - rows[a]["voi"]) / rows[b]["voi"]
    lines = [
        "| run | seeds | VOI split | VOI merge | VOI (mean +- sd) | ARAND | threshold baseline VOI |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {r.get('n_seeds', 1)} | {r['voi_split']:.4f} | {r['voi_merge']:.4f} | "
        f"{r['voi']:.4f} +- {r.get('voi_sd', 0.0):.4f} | {r['arand']:.4f} | "
        f"{r.get('baseline_voi', float('nan')):.4f} |"
        for n, r in rows.items()
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    compare_figure(rows, out / "comparison.png")
    write_json(out / "metrics.json", result)
    print("\n".join(lines))
    return result


def cmd_curve(args: argparse.Namespace) -> dict:
    """Label-efficiency curve: VOI (mean +- sd over seeds) against labelled sections, one
    line per arm, from `em finetune` folders given as ARM:N=FOLDER."""
    from .evaluate import curve_figure, write_json

    arms: dict[str, dict[int, dict]] = {}
    for item in args.runs:
        key, _, folder = item.partition("=")
        arm, _, n = key.partition(":")
        path = Path(folder) / "metrics.json"
        if not n.isdigit() or not path.is_file():
            raise _cli_error(ValueError(f"{item}: expected ARM:N=FOLDER with {path} present"))
        m = json.loads(path.read_text())
        arms.setdefault(arm, {})[int(n)] = {
            k: m.get(k, 0.0) for k in ("voi", "voi_sd", "baseline_voi", "n_seeds")
        }
    out = Path(args.out)
    curve_figure(arms, out / "label_efficiency.png")
    result = {arm: {str(n): v for n, v in sorted(pts.items())} for arm, pts in arms.items()}
    write_json(out / "metrics.json", result)
    ns = sorted({n for pts in arms.values() for n in pts})
    lines = ["| labelled sections | " + " | ".join(arms) + " |", "|---" * (len(arms) + 1) + "|"]
    for n in ns:
        cells = [
            f"{arms[a][n]['voi']:.4f} +- {arms[a][n]['voi_sd']:.4f}" if n in arms[a] else ""
            for a in arms
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    (out / "label_efficiency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return {f"voi_{a}_{n}": v["voi"] for a, pts in arms.items() for n, v in pts.items()}


def cmd_synth(args: argparse.Namespace) -> dict:
    import tifffile

    from .synthetic import make_synthetic

    raw, inst = make_synthetic(
        tuple(args.shape),
        args.cells,
        tuple(args.voxel_size),
        noise=args.noise,
        blur=args.blur,
        seed=args.seed,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out / "raw.tif", (raw * 255).astype(np.uint8))
    tifffile.imwrite(out / "labels.tif", inst.astype(np.uint32))
    print(
        f"wrote {out / 'raw.tif'} and {out / 'labels.tif'}: {raw.shape}, "
        f"{len(np.unique(inst)) - 1} cells"
    )
    return {
        "n_cells": float(len(np.unique(inst)) - 1),
        "membrane_fraction": float((inst == 0).mean()),
    }


def register(subparsers: argparse._SubParsersAction) -> None:
    em = subparsers.add_parser("em", help="EM volumes: TokenUnify pretraining, segmentation")
    sub = em.add_subparsers(title="em commands", metavar="COMMAND")

    p = sub.add_parser(
        "finetune",
        help="train an affinity decoder, then evaluate held-out",
        epilog="example: seqmodels em finetune --source isbi --pretrained runs/p/checkpoints/"
        "last.ckpt --train-sections 0 4 --tune-sections 14 22 --test-sections 22 30 "
        "--crop 8 128 128 --patch 1 16 16 --seeds 0 1 2 --out runs/ft",
    )
    _source_flags(p)
    add_flag(p, "--pretrained", default=None, help="SeqLM checkpoint (none = scratch)")
    add_flag(
        p, "--backbone-config", default=None, help="SeqLM arguments (JSON) for a scratch backbone"
    )
    add_flag(p, "--train-sections", type=int, nargs=2, default=None, metavar=("START", "STOP"))
    add_flag(p, "--test-sections", type=int, nargs=2, default=None, metavar=("START", "STOP"))
    add_flag(p, "--crop", type=int, nargs=3, default=[16, 160, 160])
    add_flag(p, "--patch", type=int, nargs=3, default=[4, 16, 16])
    add_flag(p, "--steps", type=int, default=200)
    add_flag(p, "--batch-size", type=int, default=2)
    add_flag(p, "--lr", type=float, default=1e-3)
    add_flag(p, "--backbone-lr", type=float, default=None, help="e.g. lr / 10 (gentle)")
    add_flag(p, "--freeze-fraction", type=float, default=0.0, help="backbone frozen for this part")
    add_flag(p, "--layer-lr-decay", type=float, default=1.0)
    add_flag(p, "--seeds", type=int, nargs="+", default=None, help="one run per seed; mean, sd")
    add_flag(
        p, "--offsets", default="nearest", help="nearest, long (+ 9 and 27 px in-plane), or JSON"
    )
    add_flag(
        p,
        "--augment",
        nargs="*",
        default=["flip", "intensity"],
        help="any of flip intensity elastic missing",
    )
    add_flag(p, "--channels", type=int, default=4, help="decoder features per voxel")
    add_flag(p, "--kernel", type=int, nargs=3, default=[3, 3, 3], help="decoder conv kernel")
    _eval_flags(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "evaluate",
        help="segment held-out sections with a finetuned model, beside the threshold baseline",
        epilog="example: seqmodels em evaluate --model runs/ft/affinity.ckpt --source my.h5 "
        "--key raw --labels my_labels.h5 --labels-key ids --tune-sections 0 8 --sections 8 32 "
        "--out runs/mine",
    )
    _source_flags(p)
    add_flag(p, "--model", required=True, help="affinity.ckpt from `em finetune`")
    add_flag(p, "--sections", type=int, nargs=2, default=None, metavar=("START", "STOP"))
    _eval_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="tabulate finetuning runs and VOI gains")
    add_flag(p, "--runs", nargs="+", required=True, help="NAME=FOLDER of `em finetune` runs")
    add_flag(p, "--baseline", default=None, help="run to measure VOI gains against")
    add_flag(p, "--out", required=True)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "curve",
        help="label-efficiency curve from finetuning runs",
        epilog="example: seqmodels em curve --runs scratch:2=runs/s2 mixture:2=runs/m2 "
        "scratch:4=runs/s4 mixture:4=runs/m4 --out runs/curve",
    )
    add_flag(p, "--runs", nargs="+", required=True, help="ARM:N=FOLDER of `em finetune` runs")
    add_flag(p, "--out", required=True)
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("synth", help="write a synthetic EM-like volume and its instances")
    add_flag(p, "--shape", type=int, nargs=3, default=[32, 160, 160])
    add_flag(p, "--cells", type=int, default=40)
    add_flag(p, "--voxel-size", type=float, nargs=3, default=[4.0, 1.0, 1.0])
    add_flag(p, "--noise", type=float, default=0.08)
    add_flag(p, "--blur", type=float, default=1.0)
    add_flag(p, "--seed", type=int, default=0)
    add_flag(p, "--out", required=True)
    p.set_defaults(func=cmd_synth)
