"""`seqmodels images ...`: classifier, encode, decode, generate, evaluate.

Each handler parses flags and calls the modules of this domain; it returns a metrics dict
(the recipe runner collects it) and, with --out, writes its files there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seqmodels.commands import add_flag

EXAMPLES = {
    "classifier": "seqmodels images classifier --source mnist --epochs 2 --out runs/i/classifier",
    "encode": "seqmodels images encode --tokenizer runs/i/tokenizer/checkpoints/last.ckpt "
    "--source mnist --split test --limit 100 --out ids.npz",
    "decode": "seqmodels images decode --tokenizer runs/i/tokenizer/checkpoints/last.ckpt "
    "--ids ids.npz --k 4 --out decoded.png",
    "generate": "seqmodels images generate --model runs/i/ar/checkpoints/last.ckpt "
    "--tokenizer runs/i/tokenizer/checkpoints/last.ckpt --per-class 100 --guidance 2 "
    "--out runs/i/generate",
    "evaluate": "seqmodels images evaluate --tokenizer 1d=runs/i/tokenizer/checkpoints/last.ckpt "
    "grid=runs/i/grid/checkpoints/last.ckpt --source mnist --limit 1000 "
    "--classifier runs/i/classifier/classifier.pt --out runs/i/evaluate   |   "
    "--samples runs/i/generate/samples.npz --classifier ... --source mnist --out DIR",
}


FLOW_STEPS_HELP = "Euler steps of a flow decoder (default: its checkpoint's flow_steps)"


def _err(msg: str) -> Exception:
    from seqmodels.cli import CLIError

    return CLIError(msg)


def _load_tokenizer(path: str, flow_steps: int | None = None):
    """An image tokenizer; `flow_steps` replaces a flow decoder's number of Euler steps
    (a sampling-time choice: more steps, slower and closer to the trained flow)."""
    from seqmodels.checkpoint import CheckpointError, load_module

    from .tokenizer import ImageTokenizer

    try:
        tok = load_module(path)
    except (CheckpointError, FileNotFoundError) as err:
        raise _err(f"{path}: {err}") from err
    if not isinstance(tok, ImageTokenizer):
        raise _err(f"{path}: {type(tok).__name__} is not an image tokenizer")
    if flow_steps is not None:
        if flow_steps < 1:
            raise _err(f"--flow-steps {flow_steps}: give at least 1 Euler step")
        if tok.decoder_kind == "flow":
            tok.flow_steps = flow_steps
    return tok


def _tok_shape(tok) -> dict:
    hp = tok.hparams
    return {"size": hp.image_size, "mode": "L" if hp.channels == 1 else "RGB"}


def _load_data(args, split: str, limit=None, **shape):
    from .io import ImageError
    from .splits import load_split

    try:
        data = load_split(args.source, split, limit=limit, **shape)
    except ImageError as err:
        raise _err(str(err)) from err
    data.report_notes()
    return data


def _write_metrics(out: Path, metrics: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


# -- handlers -------------------------------------------------------------------------------
def cmd_classifier(args: argparse.Namespace) -> dict:
    """Train (or reuse) the feature classifier on the real training images."""
    from .metrics import classify, load_classifier, save_classifier, train_classifier

    out = Path(args.out)
    path = out / "classifier.pt"
    key = {"source": args.source, "size": args.size, "epochs": args.epochs, "seed": args.seed}
    if path.is_file():
        model, old = load_classifier(path)
        if old == key:
            print(f"{path}: cached classifier for {key}; reused")
            return json.loads((out / "metrics.json").read_text())
        print(f"{path}: trained for {old}, not {key}; retraining")
    shape = {"size": args.size, "mode": "L"}
    train, val = _load_data(args, "train", **shape), _load_data(args, "val", **shape)
    test = _load_data(args, "test", **shape)
    model, stats = train_classifier(train, val, epochs=args.epochs, seed=args.seed)
    _, pred = classify(model, test.images)
    stats["test_accuracy"] = float((pred == test.labels).mean())
    save_classifier(model, path, key)
    _write_metrics(out, stats)
    print(json.dumps(stats))
    return stats


def cmd_encode(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from seqmodels.quantizers import codebook_metrics

    tok = _load_tokenizer(args.tokenizer)
    data = _load_data(args, args.split, args.limit, **_tok_shape(tok))
    x = torch.from_numpy(data.images)
    ids = torch.cat([tok.encode({"image": x[s : s + 256]}) for s in range(0, len(x), 256)])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if data.labels is None else {"labels": data.labels}
    np.savez_compressed(out, ids=ids.numpy(), names=np.array(data.names), **extra)
    m = {k: float(v) for k, v in codebook_metrics(ids, tok.codebook_size).items()}
    m.update(images=float(len(ids)), tokens_per_image=float(ids.shape[1]))
    print(f"wrote {out}: {len(ids)} images x {ids.shape[1]} ids; codebook {json.dumps(m)}")
    _fail_on_skipped(data)
    return m


def _fail_on_skipped(data) -> None:
    """Work that skipped inputs exits non-zero, after everything readable was written."""
    skipped = [n for n in data.notes if "skipped" in n]
    if skipped:
        raise _err(f"{len(skipped)} input(s) skipped (listed above); the rest were written")


def cmd_decode(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from .generate import decode_codes
    from .io import write_grid

    tok = _load_tokenizer(args.tokenizer, args.flow_steps)
    path = Path(args.ids)
    if not path.is_file():
        raise _err(f"{path}: ids file not found (write one with `seqmodels images encode`)")
    with np.load(path) as f:
        if "ids" not in f:
            raise _err(f"{path}: no array 'ids'")
        ids = torch.from_numpy(f["ids"]).long()
    if ids.dim() != 2 or ids.max() >= tok.codebook_size or ids.min() < 0:
        raise _err(f"{path}: ids must be (N, k) codes in [0, {tok.codebook_size})")
    k = args.k or ids.shape[1]
    if k > ids.shape[1]:
        raise _err(f"--k {k}: the file holds only {ids.shape[1]} ids per image")
    images = decode_codes(tok, ids[: args.limit, :k], seed=args.seed)
    write_grid(images, args.out, nrow=args.nrow)
    print(f"wrote {args.out}: {len(images)} images decoded from {k} tokens each")
    return {"images": float(len(images)), "k": float(k)}


def cmd_generate(args: argparse.Namespace) -> dict:
    import time

    import numpy as np
    import torch

    from seqmodels.checkpoint import CheckpointError, load_module

    from .evaluate import per_class_grid
    from .generate import decode_codes, sample_codes

    tok = _load_tokenizer(args.tokenizer, args.flow_steps)
    try:
        model = load_module(args.model)
    except (CheckpointError, FileNotFoundError) as err:
        raise _err(f"{args.model}: {err}") from err
    n_classes = int(model.hparams.d_cond or 0)
    if not n_classes:
        raise _err(f"{args.model}: the AR model is not class-conditioned (d_cond is 0)")
    k = args.k or tok.n_tokens
    if not 1 <= k <= tok.n_tokens:
        raise _err(f"--k {k}: the tokenizer has {tok.n_tokens} tokens")
    wanted = args.classes if args.classes else list(range(n_classes))
    classes = [c for c in wanted for _ in range(args.per_class)]
    torch.manual_seed(args.seed)
    t = time.perf_counter()
    codes = sample_codes(
        model,
        classes,
        n_classes,
        k,
        args.guidance,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
    )
    t_sample = time.perf_counter() - t
    images = decode_codes(tok, codes, seed=args.seed)
    t_total = time.perf_counter() - t
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cls = np.array(classes)
    np.savez_compressed(out / "samples.npz", images=images, labels=cls, codes=codes.numpy())
    per_class_grid(images, cls, out / f"samples_per_class_k{k}.png")
    m = {
        "n_samples": float(len(images)),
        "k": float(k),
        "guidance": args.guidance,
        "images_per_s": len(images) / t_total,
        "sample_s": t_sample,
    }
    _write_metrics(out, m)
    print(f"wrote {out / 'samples.npz'} and the per-class grid: {json.dumps(m)}")
    return m


def cmd_evaluate(args: argparse.Namespace) -> dict:
    import numpy as np

    from .evaluate import evaluate_reconstruction
    from .metrics import generation_scores, load_classifier

    if not args.tokenizer and not args.samples:
        raise _err("give --tokenizer NAME=CKPT ... (reconstruction) and/or --samples FILE")
    clf = None
    if args.classifier:
        if not Path(args.classifier).is_file():
            raise _err(f"{args.classifier}: classifier not found (`seqmodels images classifier`)")
        clf, _ = load_classifier(args.classifier)
    out = Path(args.out)
    metrics: dict = {}
    if args.tokenizer:
        toks = {}
        for item in args.tokenizer:
            name, sep, path = item.partition("=")
            if not sep:
                name, path = Path(item).parent.parent.name or "tokenizer", item
            toks[name] = _load_tokenizer(path, args.flow_steps)
        shape = _tok_shape(next(iter(toks.values())))
        data = _load_data(args, args.split, args.limit, **shape)
        ref = _load_data(args, "train", args.limit_reference, **shape).images if clf else None
        rec = evaluate_reconstruction(toks, data, out, args.ks, clf, ref)
        metrics.update(rec)
    if args.samples:
        if clf is None:
            raise _err("--samples needs --classifier to score them")
        path = Path(args.samples)
        if not path.is_file():
            raise _err(f"{path}: samples not found (`seqmodels images generate`)")
        with np.load(path) as f:
            images, labels = f["images"], f.get("labels")
        size = images.shape[-1]
        train = _load_data(args, "train", args.limit_reference, size=size, mode="L")
        test = _load_data(args, "test", None, size=size, mode="L")
        gen = generation_scores(clf, images, labels, train.images, test.images)
        metrics.update({f"generation/{k}": v for k, v in gen.items()})
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)} | {
        f"{k}/{kk}": vv for k, v in metrics.items() if isinstance(v, dict) for kk, vv in v.items()
    }
    print(json.dumps(flat, indent=1))
    return metrics


# -- parser ---------------------------------------------------------------------------------
def _source(p: argparse.ArgumentParser, split: str | None = "test") -> None:
    add_flag(
        p, "--source", default="digits", help="digits, mnist, skimage:NAME, a folder or .npy/.npz"
    )
    if split:
        add_flag(
            p,
            "--split",
            default=split,
            choices=["train", "val", "test", "all"],
            help=f"fixed splits (see domains/images/splits.py); default {split}",
        )
        add_flag(p, "--limit", type=int, default=None, help="the first N images of the split")


def register(subparsers: argparse._SubParsersAction) -> None:
    images = subparsers.add_parser(
        "images", help="images: FlexTok 1D tokens, 2D-grid baseline, class-conditional AR"
    )
    sub = images.add_subparsers(title="images commands", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    def add(name: str, help_: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help_, epilog=f"example:\n  {EXAMPLES[name]}", formatter_class=raw
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "classifier",
        "train the feature classifier on real training images (cached)",
        cmd_classifier,
    )
    _source(p, split=None)
    add_flag(p, "--size", type=int, default=None, help="resize images to SIZE x SIZE")
    add_flag(p, "--epochs", type=int, default=2)
    add_flag(p, "--seed", type=int, default=0)
    add_flag(p, "--out", required=True, help="folder for classifier.pt and metrics.json")

    p = add("encode", "images -> token ids (npz: ids, labels, names)", cmd_encode)
    add_flag(p, "--tokenizer", required=True, help="tokenizer checkpoint")
    _source(p, split="all")
    add_flag(p, "--out", required=True, help="output .npz")

    p = add("decode", "token ids (a prefix of k per image) -> PNG grid", cmd_decode)
    add_flag(p, "--tokenizer", required=True)
    add_flag(p, "--ids", required=True, help=".npz from `images encode` or `images generate`")
    add_flag(p, "--k", type=int, default=None, help="decode from the first k ids (default all)")
    add_flag(p, "--limit", type=int, default=100)
    add_flag(p, "--nrow", type=int, default=10)
    add_flag(p, "--seed", type=int, default=0, help="noise seed of a flow decoder")
    add_flag(p, "--flow-steps", type=int, default=None, help=FLOW_STEPS_HELP)
    add_flag(p, "--out", required=True, help="output .png")

    p = add("generate", "class-conditional samples with classifier-free guidance", cmd_generate)
    add_flag(p, "--model", required=True, help="AR checkpoint (a `seqmodels fit` stage)")
    add_flag(p, "--tokenizer", required=True)
    add_flag(p, "--per-class", type=int, default=10)
    add_flag(p, "--classes", type=int, nargs="*", default=None, help="default: every class")
    add_flag(p, "--k", type=int, default=None, help="tokens per image (default K)")
    add_flag(p, "--guidance", type=float, default=1.0, help="1 = no guidance, 0 = unconditional")
    add_flag(p, "--temperature", type=float, default=1.0)
    add_flag(p, "--top-k", type=int, default=None)
    add_flag(p, "--top-p", type=float, default=None)
    add_flag(p, "--seed", type=int, default=0)
    add_flag(p, "--flow-steps", type=int, default=None, help=FLOW_STEPS_HELP)
    add_flag(p, "--out", required=True, help="folder for samples.npz and the PNG grid")

    p = add(
        "evaluate", "reconstruction at every k, and/or scores of generated samples", cmd_evaluate
    )
    add_flag(p, "--tokenizer", nargs="*", default=None, help="NAME=CKPT (one or more)")
    add_flag(p, "--samples", default=None, help="samples.npz from `images generate`")
    add_flag(p, "--classifier", default=None, help="classifier.pt (feature distances)")
    _source(p)
    add_flag(p, "--ks", type=int, nargs="*", default=None, help="default 1, 2, 4, ..., K")
    add_flag(
        p, "--limit-reference", type=int, default=None, help="training images used as reference"
    )
    add_flag(p, "--flow-steps", type=int, default=None, help=FLOW_STEPS_HELP)
    add_flag(p, "--out", required=True)
