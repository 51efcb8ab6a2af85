"""Choose the classifier-free guidance scale, and a flow decoder's Euler steps, on MNIST's
validation split (never the test images): for each scale, 100 class-conditional samples per
class from the AR model, decoded by each tokenizer given (a flow decoder once per
`--flow-steps` value), scored against the validation images (the project's
classifier features: Frechet distance, k-NN precision / recall, class accuracy), beside
the floor of as many real training images against the same validation images. Prints one
JSON object as its last line.

    python bench/images_guidance_select.py --model runs/images_flextok/ar/checkpoints/last.ckpt \\
        --tokenizer flow=runs/images_flextok/flow/checkpoints/last.ckpt \\
        --classifier runs/images_flextok/classifier/classifier.pt --guidance 1 1.5 2 3 \\
        --flow-steps 32 64 --out runs/images_guidance_select.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from domains.images.generate import decode_codes, sample_codes  # noqa: E402
from domains.images.metrics import (  # noqa: E402
    classify,
    frechet_distance,
    load_classifier,
    precision_recall,
)
from domains.images.splits import load_split  # noqa: E402
from seqmodels.checkpoint import load_module  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, help="the class-conditional AR checkpoint")
    p.add_argument("--tokenizer", nargs="+", required=True, help="NAME=CKPT ...")
    p.add_argument("--classifier", required=True)
    p.add_argument("--source", default="mnist")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    p.add_argument(
        "--flow-steps", type=int, nargs="*", default=[], help="default: the checkpoint's"
    )
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON file")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_module(args.model)
    toks = {}  # name -> (tokenizer, Euler steps to decode with; None: not a flow decoder)
    for name, path in (s.split("=", 1) for s in args.tokenizer):
        tok = load_module(path)
        if tok.decoder_kind != "flow" or not args.flow_steps:
            toks[name] = (tok, None)
            continue
        for n in args.flow_steps:
            toks[f"{name}@euler{n}"] = (tok, n)
    clf, _ = load_classifier(args.classifier)
    f_val, _ = classify(clf, load_split(args.source, "val").images)
    n_classes = int(model.hparams.d_cond)
    classes = [c for c in range(n_classes) for _ in range(args.per_class)]
    train = load_split(args.source, "train").images
    rng = np.random.default_rng(args.seed)
    f_real, _ = classify(clf, train[rng.permutation(len(train))[: len(classes)]])
    floor = {"feature_fd": frechet_distance(f_real, f_val), **precision_recall(f_val, f_real)}
    result: dict = {"floor_train_vs_val": {key: round(v, 4) for key, v in floor.items()}}
    print(json.dumps(result), flush=True)
    k = next(iter(toks.values()))[0].n_tokens
    for g in args.guidance:
        torch.manual_seed(args.seed)
        codes = sample_codes(model, classes, n_classes, k, g, seed=args.seed, progress=False)
        for name, (tok, steps) in toks.items():
            if steps is not None:  # read when decoding
                tok.flow_steps = steps
            images = decode_codes(tok, codes, seed=args.seed)
            f, pred = classify(clf, images)
            r = {"feature_fd": frechet_distance(f, f_val)}
            r["class_accuracy"] = float((pred == np.array(classes)).mean())
            r.update(precision_recall(f_val, f))
            result[f"{name}/guidance{g:g}"] = {key: round(v, 4) for key, v in r.items()}
            print(
                json.dumps({f"{name}/guidance{g:g}": result[f"{name}/guidance{g:g}"]}), flush=True
            )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
