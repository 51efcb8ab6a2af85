"""1D (FlexTok registers) vs 2D-grid tokenizer over training seeds: PSNR at every k on the
test split, mean and standard deviation per layout. Each run is the recipe's tokenizer
stage (`seqmodels fit`, recipes/images/quickstart.yaml's settings by default) with
`seed_everything` and the model seed changed; the split is fixed. Prints one JSON object
as its last line.

    python bench/images_seeds.py --seeds 0 1 2 --out runs/images_seeds
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from domains.images.evaluate import default_ks, reconstruct_all  # noqa: E402
from domains.images.metrics import reconstruction_scores  # noqa: E402
from domains.images.splits import load_split  # noqa: E402
from seqmodels.checkpoint import load_module  # noqa: E402


def tokenizer_config(recipe: Path) -> dict:
    stages = yaml.safe_load(recipe.read_text())["stages"]
    return next(s for s in stages if s["name"] == "tokenizer")["config"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default=str(ROOT / "recipes/images/quickstart.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--limit", type=int, default=None, help="test images scored")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    base = tokenizer_config(Path(args.recipe))
    source = base["data"]["init_args"]["source"]
    out = Path(args.out)
    scores: dict[str, dict[int, list[float]]] = {"1d": {}, "grid": {}}
    test = None
    for layout in scores:
        for seed in args.seeds:
            cfg = copy.deepcopy(base)
            cfg["seed_everything"] = seed
            cfg["model"]["init_args"].update(layout=layout, seed=seed)
            run = out / f"{layout}_s{seed}"
            ckpt = run / "checkpoints" / "last.ckpt"
            if not ckpt.is_file():
                run.mkdir(parents=True, exist_ok=True)
                (run / "config.yaml").write_text(yaml.safe_dump(cfg))
                cmd = [
                    sys.executable,
                    "-m",
                    "seqmodels",
                    "fit",
                    "--config",
                    str(run / "config.yaml"),
                    "--trainer.default_root_dir",
                    str(run),
                    "--trainer.enable_progress_bar",
                    "false",
                ]
                subprocess.run(cmd, check=True)
            tok = load_module(ckpt)
            if test is None:
                size = tok.hparams.image_size
                test = load_split(source, "test", size=size, mode="L", limit=args.limit).images
            ks = default_ks(tok.n_tokens)
            recon, _ = reconstruct_all(tok, test, ks)
            for k in ks:
                psnr = reconstruction_scores(torch.from_numpy(recon[k]), torch.from_numpy(test))[
                    "psnr"
                ]
                scores[layout].setdefault(k, []).append(psnr)
    summary: dict = {"recipe": args.recipe, "seeds": args.seeds, "source": source}
    for layout, per_k in scores.items():
        for k, vals in per_k.items():
            summary[f"{layout}/k{k}/psnr_mean"] = statistics.mean(vals)
            summary[f"{layout}/k{k}/psnr_sd"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    ks = sorted(scores["1d"])
    summary["1d_beats_grid_every_seed_k_below_K"] = all(
        a > b for k in ks[:-1] for a, b in zip(scores["1d"][k], scores["grid"][k])
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
