"""Choose the flow decoder's settings on MNIST's validation split (never the test images).

Each variant is a flow decoder trained on a finished MSE tokenizer's frozen encoder (as the
recipe's `flow` stage: `init_from`, `freeze_encoder`, the tokenizer's optimiser settings),
for `--steps` steps on the training split, then scored on the first `--limit` validation
images: PSNR at k = 4 and K, and the feature Frechet distance of the reconstructions
against the training images (the project's classifier, as `images evaluate`), for each
number of Euler steps. The validation floor (the real validation images against the
training set) is printed beside them. Prints one JSON object as its last line.

    python bench/images_flow_select.py --tokenizer runs/images_flextok/tokenizer/checkpoints/last.ckpt \\
        --classifier runs/images_flextok/classifier/classifier.pt --steps 1000 \\
        --variant v:flow_predict=v --variant x:flow_predict=x --out runs/images_flow_select.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from domains.images.metrics import (  # noqa: E402
    classify,
    frechet_distance,
    load_classifier,
    reconstruction_scores,
)
from domains.images.splits import load_split  # noqa: E402
from domains.images.tokenizer import ImageTokenizer  # noqa: E402
from seqmodels.checkpoint import load_checkpoint, load_module  # noqa: E402


def parse_variant(spec: str) -> tuple[str, dict]:
    """'name:key=value,key=value' (values parsed as YAML scalars)."""
    name, _, rest = spec.partition(":")
    kv = dict(item.split("=", 1) for item in rest.split(",") if item)
    return name, {k: yaml.safe_load(v) for k, v in kv.items()}


def train_flow(base: dict, ckpt: str, over: dict, steps: int, train: np.ndarray, seed: int):
    torch.manual_seed(seed)
    hp = {**base, "decoder": "flow", "init_from": ckpt, "freeze_encoder": True}
    hp.update(over, max_steps=steps, seed=seed)
    tok = ImageTokenizer(**hp)
    opt_cfg = tok.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(train)
    bs = 64
    tok.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(x), (bs,), generator=gen)
        loss, _, _ = tok.loss({"image": x[idx]}, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    tok.eval()
    return tok, float(np.mean(losses[-100:]))


@torch.no_grad()
def score(tok, ids: torch.Tensor, images: np.ndarray, clf, f_ref, labels, ks, euler) -> dict:
    out = {}
    for n in euler:
        tok.flow_steps = n
        for k in ks:
            g = torch.Generator().manual_seed(0)
            rec = torch.cat(
                [tok.decode(ids[s : s + 250, :k], generator=g) for s in range(0, len(ids), 250)]
            )
            m = reconstruction_scores(rec, torch.from_numpy(images))
            f, pred = classify(clf, rec.numpy())
            m["feature_fd"] = frechet_distance(f, f_ref)
            m["class_accuracy"] = float((pred == labels).mean())
            out[f"euler{n}/k{k}"] = {key: round(v, 4) for key, v in m.items()}
        if tok.decoder_kind == "mse":
            break
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="the finished MSE tokenizer's checkpoint")
    p.add_argument("--classifier", required=True)
    p.add_argument("--source", default="mnist")
    p.add_argument("--variant", action="append", default=[], help="name:key=value,...")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--euler", type=int, nargs="+", default=[8, 16])
    p.add_argument("--limit", type=int, default=1000, help="validation images scored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON file")
    args = p.parse_args()
    torch.set_num_threads(1)
    state = load_checkpoint(args.tokenizer)
    base = {k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")}
    base.pop("init_from", None)
    mse = load_module(args.tokenizer).eval()
    train = load_split(args.source, "train").images
    val = load_split(args.source, "val", limit=args.limit)
    clf, _ = load_classifier(args.classifier)
    f_ref, _ = classify(clf, train)
    f_val, _ = classify(clf, val.images)
    ids = mse.encode({"image": torch.from_numpy(val.images)})
    ks = [4, mse.n_tokens]
    result: dict = {"val_floor_fd": round(frechet_distance(f_val, f_ref), 4), "steps": args.steps}
    result["mse"] = score(mse, ids, val.images, clf, f_ref, val.labels, ks, [0])
    print(json.dumps({"mse": result["mse"], "floor": result["val_floor_fd"]}), flush=True)
    for spec in args.variant:
        name, over = parse_variant(spec)
        t = time.perf_counter()
        tok, last = train_flow(base, args.tokenizer, over, args.steps, train, args.seed)
        train_s = time.perf_counter() - t
        r = {"settings": over, "train_s": round(train_s, 1), "final_loss": round(last, 5)}
        r.update(score(tok, ids, val.images, clf, f_ref, val.labels, ks, args.euler))
        result[name] = r
        print(json.dumps({name: r}), flush=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
