"""`seqmodels points ...`: encode, decode, generate, evaluate, render.

Each handler returns a metrics dict (the recipe runner collects it); shapes come out as
PLY files (trimesh), pictures as PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

EXAMPLES = {
    "encode": "seqmodels points encode ../shared/data/points/modelnet10_pcd/chair_train "
    "--tokenizer runs/p/tokenizer/checkpoints/last.ckpt --out tokens.npz",
    "decode": "seqmodels points decode tokens.npz --tokenizer "
    "runs/p/tokenizer/checkpoints/last.ckpt --levels 3 --out decoded/",
    "generate": "seqmodels points generate --model runs/p/ar/checkpoints/last.ckpt "
    "--classes chair --n 100 --guidance 2.0 --out generated/",
    "evaluate": "seqmodels points evaluate --samples generated/samples.npz --source modelnet10 "
    "--classes chair --out eval/",
    "render": "seqmodels points render generated/samples.npz --per-class 8 --out shapes.png",
    "compare": "seqmodels points compare --runs cross_scale=runs/p/eval_xs_s0,runs/p/eval_xs_s1 "
    "raster=runs/p/eval_raster_s0,runs/p/eval_raster_s1 --out runs/p/compare",
}


def _err(msg: str) -> Exception:
    from seqmodels.commands import CLIError

    return CLIError(msg)


def _read(inputs: list[str], n_points: int, seed: int):
    """Shapes from files / folders / samples.npz; bad shapes are reported, not fatal."""
    from .io import Shape, read_shapes

    shapes, errors = [], []
    other = []
    for item in inputs:
        if item.endswith(".npz"):
            z = np.load(item)
            classes = list(z["classes"]) if "classes" in z else []
            for i, pts in enumerate(z["points"]):
                lab = classes[int(z["labels"][i])] if classes else None
                shapes.append(Shape(f"{item}[{i}]", pts.astype(np.float32), lab))
        else:
            other.append(item)
    if other:
        r = read_shapes(other, n_points, seed=seed, progress=len(other) > 20)
        shapes += r.shapes
        errors += r.errors
    for e in errors:
        print(f"skipped: {e}", file=sys.stderr)
    return shapes, errors


def cmd_encode(args) -> dict:
    import torch

    from .ar import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    shapes, errors = _read(args.inputs, args.n_points, args.seed)
    if not shapes:
        raise _err("no readable shape in the inputs")
    ids = []
    for i in range(0, len(shapes), args.batch_size):
        x = torch.from_numpy(np.stack([s.points for s in shapes[i : i + args.batch_size]]))
        ids.append(tok.encode(x).numpy())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        ids=np.concatenate(ids),
        names=np.array([s.name for s in shapes]),
        scales=np.array(tok.sizes),
    )
    print(f"{len(shapes)} shapes -> {out} ({tok.n_tokens} tokens each, scales {tok.sizes})")
    if errors:
        raise _err(f"{len(errors)} shapes could not be read (listed above); the rest are in {out}")
    return {"shapes": len(shapes)}


def cmd_decode(args) -> dict:
    import torch

    from .ar import load_tokenizer
    from .io import write_ply

    tok = load_tokenizer(args.tokenizer)
    z = np.load(args.tokens)
    ids = torch.from_numpy(z["ids"]).long()
    names = list(z["names"]) if "names" in z else [f"shape_{i:04d}" for i in range(len(ids))]
    out = Path(args.out)
    clouds = []
    for i in range(0, len(ids), args.batch_size):
        clouds.append(
            tok.decode(
                ids[i : i + args.batch_size],
                args.n_points,
                args.levels,
                args.seed,
                args.oversample,
            )
        )
    clouds = torch.cat(clouds).numpy()
    for i, pts in enumerate(clouds):
        write_ply(out / f"{i:04d}_{Path(str(names[i])).stem}.ply", pts)
    np.savez(out / "samples.npz", points=clouds, labels=np.zeros(len(clouds), int))
    print(f"{len(clouds)} PLY files -> {out}")
    return {"shapes": len(clouds)}


def _load_generator(path: str):
    """(kind, model, class names, raster resolution) of a CrossScaleAR or raster SeqLM."""
    from seqmodels.checkpoint import load_checkpoint, load_module

    from .ar import load_ar
    from .data import source_classes

    ckpt = load_checkpoint(path)
    if ckpt.get("seqmodels_class", "").endswith("CrossScaleAR"):
        ar = load_ar(path)
        return "cross_scale", ar, ar.classes, None
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    if "resolution" not in dm:
        raise _err(f"{path}: neither a CrossScaleAR nor a raster SeqLM (RasterDataModule) model")
    model = load_module(path)
    return "raster", model, list(source_classes(dm["source"], dm.get("classes"))), dm["resolution"]


def cmd_generate(args) -> dict:
    import time

    from .evaluate import generate_clouds
    from .io import write_ply
    from .raster import generate_raster
    from .render import render_grid

    kind, model, known, resolution = _load_generator(args.model)
    classes = args.classes or known
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise _err(f"classes {unknown} unknown to the model (it knows {known})")
    labels = [known.index(c) for c in classes for _ in range(args.n)]
    t0 = time.time()
    if kind == "cross_scale":
        clouds, ids = generate_clouds(
            model,
            labels,
            args.n_points,
            args.guidance,
            args.temperature,
            args.top_k,
            args.top_p,
            args.seed,
            args.batch_size,
            progress=True,
            oversample=args.oversample,
        )
    else:
        clouds = generate_raster(
            model,
            labels,
            len(known),
            resolution,
            args.n_points,
            args.guidance,
            args.temperature,
            args.top_k,
            args.top_p,
            args.seed,
            args.batch_size,
            args.oversample,
        )
        ids = np.zeros((len(clouds), 0), np.int64)
    dt = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / "samples.npz",
        points=clouds,
        ids=ids,
        labels=np.array(labels),
        classes=np.array(known),
        oversample=args.oversample,
    )
    for i, (pts, lab) in enumerate(zip(clouds, labels)):
        write_ply(out / "ply" / f"{known[lab]}_{i:04d}.ply", pts)
    rows = [(c, [p for p, lab in zip(clouds, labels) if known[lab] == c][:8]) for c in classes]
    render_grid(rows, out / "generated.png")
    metrics = {
        "shapes": len(clouds),
        "shapes_per_s": len(clouds) / dt,
        "oversample": args.oversample,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(f"{len(clouds)} shapes ({kind}) in {dt:.1f} s -> {out}")
    return metrics


def cmd_evaluate(args) -> dict:
    from .data import load_source
    from .evaluate import generation_metrics, reconstruction_by_level

    z = np.load(args.samples)
    sample_classes = list(z["classes"]) if "classes" in z else None
    # the tokenized references are decoded as the samples were (generate --oversample)
    oversample = int(z["oversample"]) if "oversample" in z else 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = tuple(args.classes) if args.classes else None
    # the train-copy oracle comes from the shapes a model scored on `split` trained on
    train_split = {"val": "train", "select": "fit"}[args.split]
    refs = load_source(args.source, args.split, classes, args.n_points, args.n_synthetic, args.seed)
    # a path holds only references (e.g. shapes no model has seen): the train copy needs
    # the training shapes named apart, or it would copy the references themselves
    named = args.source in ("synthetic", "modelnet10")
    train_source = args.train_source or (args.source if named else None)
    references = not args.no_references
    if references and train_source is None:
        print(
            f"note: {args.source} is a path of reference shapes; the train-copy and one-shape "
            "references are skipped (name the training shapes with --train-source)",
            file=sys.stderr,
        )
        references = False
    train = None  # read only for the references (789 chairs: seconds of I/O per evaluation)
    if references:
        train = load_source(
            train_source, train_split, classes, args.n_points, args.n_synthetic, args.seed
        )
    tok = None
    if args.tokenizer:
        from .ar import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
    result: dict = {}
    flat: dict[str, float] = {}
    for cls in refs.classes:
        if sample_classes is None or cls not in sample_classes:
            continue
        mine = z["points"][z["labels"] == sample_classes.index(cls)]
        if len(mine) == 0:
            continue
        ref_c = refs.of_class(cls)
        train_c = train.of_class(cls).points if train is not None else None
        n_ref = min(args.n_ref or len(ref_c), len(ref_c))
        m = generation_metrics(
            mine,
            ref_c.points[:n_ref],
            train_c,
            args.emd,
            args.emd_points,
            args.seed,
            tok,
            references=references,
            oversample=oversample,
        )
        result[cls] = m
        for who, vals in m.items():
            for k, v in vals.items():
                flat[f"{cls}/{who}/{k}"] = v
        oracle = m.get("train_copy")
        print(
            f"{cls}: "
            + ", ".join(f"{k} {v:.4f}" for k, v in m["model"].items())
            + (f"  (train copy 1-NNA-CD {oracle['1-NNA-CD']:.3f})" if oracle else "")
        )
    if tok is not None:
        from .render import render_grid

        rec = reconstruction_by_level(tok, refs, seed=args.seed, oversample=oversample)
        result["reconstruction_chamfer_by_level"] = dict(zip(map(str, tok.sizes), rec))
        for n, v in zip(tok.sizes, rec):
            flat[f"recon_chamfer/{n}_tokens"] = v
        import torch

        x = torch.from_numpy(refs.points[:1])
        ids = tok.encode(x)
        steps = [
            tok.decode(ids, refs.points.shape[1], k, args.seed, oversample)[0].numpy()
            for k in range(1, len(tok.sizes) + 1)
        ]
        titles = [
            [f"{sum(tok.sizes[:k])} tokens" for k in range(1, len(tok.sizes) + 1)] + ["input"]
        ]
        render_grid([("", steps + [refs.points[0]])], out / "reconstruction_by_level.png", titles)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    if not result:
        raise _err(f"no sample class matches the reference classes {refs.classes}")
    return flat


def cmd_render(args) -> dict:
    from .render import render_grid

    shapes, errors = _read(args.inputs, args.n_points, args.seed)
    if not shapes:
        raise _err("nothing to render")
    groups: dict[str, list] = {}
    for s in shapes:
        groups.setdefault(s.label or "shapes", []).append(s.points)
    rows = [(k, v[: args.per_class]) for k, v in groups.items()]
    path = render_grid(rows, args.out)
    print(f"{sum(len(v) for _, v in rows)} shapes -> {path}")
    if errors:
        raise _err(f"{len(errors)} shapes could not be read (listed above)")
    return {"shapes": sum(len(v) for _, v in rows)}


def cmd_compare(args) -> dict:
    """Mean and spread over seeds of each model's metrics (evaluate folders), per class,
    with the references of the first run beside them; a markdown table and a bar plot."""
    rows: dict[str, dict[str, list[float]]] = {}
    refs: dict[str, dict[str, float]] = {}
    for spec in args.runs:
        name, _, folders = spec.partition("=")
        if not folders:
            raise _err(f"--runs takes NAME=FOLDER[,FOLDER...], got {spec!r}")
        for folder in folders.split(","):
            path = Path(folder) / "metrics.json"
            if not path.is_file():
                raise _err(f"{path}: no metrics.json (run `points evaluate` first)")
            data = json.loads(path.read_text())
            for cls, res in data.items():
                if not isinstance(res, dict) or "model" not in res:
                    continue
                for k, v in res["model"].items():
                    rows.setdefault(f"{name} ({cls})", {}).setdefault(k, []).append(v)
                for who in ("train_copy", "tokenized_train_copy", "single_shape"):
                    if who in res and f"{who} ({cls})" not in refs:
                        refs[f"{who} ({cls})"] = res[who]
    keys = ["MMD-CD", "COV-CD", "1-NNA-CD"]
    summary = {
        r: {
            k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)}
            for k, v in m.items()
        }
        for r, m in rows.items()
    }
    lines = ["| model | seeds | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r, m in summary.items():
        n = m[keys[0]]["n"]
        cells = [f"{m[k]['mean']:.4f} +- {m[k]['std']:.4f}" for k in keys]
        lines.append(f"| {r} | {n} | " + " | ".join(cells) + " |")
    for r, m in refs.items():
        lines.append(f"| {r} | - | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    (out / "metrics.json").write_text(json.dumps({"models": summary, "references": refs}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    names = list(summary) + list(refs)
    for ax, k in zip(axes, keys):
        means = [summary[n][k]["mean"] if n in summary else refs[n][k] for n in names]
        errs = [summary[n][k]["std"] if n in summary else 0 for n in names]
        ax.bar(
            range(len(names)), means, yerr=errs, color=["C0"] * len(summary) + ["C7"] * len(refs)
        )
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_title(k)
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=110)
    plt.close(fig)
    print("\n".join(lines))
    return {f"{r}/{k}": v["mean"] for r, m in summary.items() for k, v in m.items()}


def register(subparsers: argparse._SubParsersAction) -> None:
    from seqmodels.commands import add_flag

    raw = argparse.RawDescriptionHelpFormatter
    pts = subparsers.add_parser("points", help="3-D point clouds: G3PT tokenizer and generation")
    sub = pts.add_subparsers(title="points commands", metavar="COMMAND")
    pts.set_defaults(func=lambda args: pts.print_help())

    def oversample_flag(p: argparse.ArgumentParser) -> None:
        add_flag(
            p,
            "--oversample",
            type=int,
            default=1,
            help="decode N x this many points and keep a farthest-point subset of N: an even "
            "spread like the Poisson-disk reference clouds' (default 1: the decoded points "
            "as they come)",
        )

    def leaf(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help_, epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=raw
        )
        add_flag(p, "--n-points", type=int, default=1024, help="points per shape (default 1024)")
        add_flag(p, "--seed", type=int, default=0)
        return p

    p = leaf("encode", "point clouds / meshes / voxel grids -> token ids per scale (.npz)")
    p.add_argument("inputs", nargs="+", help="shape files or folders (PLY PCD XYZ NPY OBJ OFF STL)")
    add_flag(p, "--tokenizer", required=True, help="PointTokenizer checkpoint")
    add_flag(p, "--batch-size", type=int, default=32)
    add_flag(p, "--out", required=True, help="tokens .npz (ids, names, scales)")
    p.set_defaults(func=cmd_encode)

    p = leaf("decode", "token ids (.npz from encode) -> point clouds (PLY)")
    p.add_argument("tokens", help=".npz written by `points encode`")
    add_flag(p, "--tokenizer", required=True, help="PointTokenizer checkpoint")
    add_flag(p, "--levels", type=int, default=None, help="decode the first K scales only")
    oversample_flag(p)
    add_flag(p, "--batch-size", type=int, default=32)
    add_flag(p, "--out", required=True, help="folder for the PLY files")
    p.set_defaults(func=cmd_decode)

    p = leaf("generate", "sample shapes scale by scale from a cross-scale AR model")
    add_flag(p, "--model", required=True, help="CrossScaleAR or raster SeqLM checkpoint")
    add_flag(p, "--classes", nargs="+", default=None, help="class names (default: all)")
    add_flag(p, "--n", type=int, default=100, help="shapes per class (default 100)")
    add_flag(p, "--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    add_flag(p, "--temperature", type=float, default=1.0)
    add_flag(p, "--top-k", type=int, default=None)
    add_flag(p, "--top-p", type=float, default=None)
    add_flag(p, "--batch-size", type=int, default=50)
    oversample_flag(p)
    add_flag(p, "--out", required=True, help="folder: samples.npz, ply/, generated.png")
    p.set_defaults(func=cmd_generate)

    p = leaf("evaluate", "MMD / COV / 1-NNA (PointFlow) vs the validation split, per class")
    add_flag(p, "--samples", required=True, help="samples.npz from `points generate`")
    add_flag(p, "--source", default="synthetic", help="synthetic, modelnet10, or a path")
    add_flag(p, "--classes", nargs="+", default=None)
    add_flag(p, "--n-synthetic", type=int, default=100, help="synthetic shapes per class")
    add_flag(p, "--n-ref", type=int, default=None, help="use the first N validation shapes")
    add_flag(
        p,
        "--split",
        choices=("val", "select"),
        default="val",
        help="reference shapes: the validation split, or `select` (carved from the training "
        "shapes, for model selection; the train copy then comes from `fit`)",
    )
    add_flag(p, "--emd", action="store_true", help="also the EMD variants (exact, on a subset)")
    add_flag(p, "--emd-points", type=int, default=256)
    add_flag(p, "--tokenizer", default=None, help="also reconstruction Chamfer per scale")
    add_flag(
        p,
        "--train-source",
        default=None,
        help="where the train-copy reference's shapes come from (default: --source's "
        "training split); needed when --source is a path of held-out shapes, e.g. "
        "`--source ModelNet10/chair/test --train-source modelnet10`",
    )
    add_flag(
        p,
        "--no-references",
        action="store_true",
        help="score the samples only, without the train-copy and one-shape references: "
        "they are the same for every model scored against the same split and seed (a "
        "recipe computes them once; `points compare` shows them beside every model)",
    )
    add_flag(p, "--out", required=True, help="folder for metrics.json and figures")
    p.set_defaults(func=cmd_evaluate)

    p = leaf("render", "PNG grid of shapes (files, folders or samples.npz), a row per class")
    p.add_argument("inputs", nargs="+")
    add_flag(p, "--per-class", type=int, default=8)
    add_flag(p, "--out", required=True, help="PNG path")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser(
        "compare",
        help="mean and spread over seeds of evaluate runs, a table and a plot",
        epilog=f"example:\n  {EXAMPLES['compare']}",
        formatter_class=raw,
    )
    add_flag(p, "--runs", nargs="+", required=True, help="NAME=EVAL_FOLDER[,EVAL_FOLDER...]")
    add_flag(p, "--out", required=True, help="folder for compare.md, compare.png, metrics.json")
    p.set_defaults(func=cmd_compare)
