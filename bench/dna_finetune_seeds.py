"""Finetune the same stage with several training seeds (split fixed by split_seed) and report
the mean and sd of each task's test accuracy / MCC / F1, beside the stage's baselines.

A recipe stage has one seed; a comparison claim needs several. This reruns a finished fit
stage's config.yaml (e.g. runs/dna_omni/multitask/config.yaml) with seed_everything set to
each seed, scores its best-validation checkpoint with `seqmodels dna classify`, and prints
one JSON object as its last line.

  python bench/dna_finetune_seeds.py --config runs/dna_omni/multitask/config.yaml \\
      --seeds 0 1 2 3 4 --out runs/dna_omni/seeds_multitask [--only human_nontata]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml


def run_seed(config: dict, seed: int, out: Path, only: list[str] | None) -> dict:
    """Fit with `seed`, classify the best (else last) checkpoint; the classify metrics."""
    stage = out / f"seed{seed}"
    cfg = json.loads(json.dumps(config))  # deep copy
    cfg["seed_everything"] = seed
    cfg["trainer"]["default_root_dir"] = str(stage)
    cfg["trainer"].pop("logger", None)
    for cb in cfg["trainer"].get("callbacks") or []:
        if "dirpath" in cb.get("init_args", {}):
            cb["init_args"]["dirpath"] = str(stage / "checkpoints")
    if only:
        cfg["data"]["init_args"]["only"] = only
    stage.mkdir(parents=True, exist_ok=True)
    (stage / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    cli = [sys.executable, "-m", "seqmodels", "--threads", "1"]
    if not (stage / "classify" / "metrics.json").is_file():
        subprocess.run([*cli, "fit", "--config", str(stage / "config.yaml")], check=True)
        best = stage / "checkpoints" / "best.ckpt"
        ckpt = best if best.is_file() else stage / "checkpoints" / "last.ckpt"
        subprocess.run(
            [*cli, "dna", "classify", "--ckpt", str(ckpt), "--config", str(stage / "config.yaml"),
             "--rc-average", "--out", str(stage / "classify")],
            check=True,
        )  # fmt: skip
    return json.loads((stage / "classify" / "metrics.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", required=True, help="a finished fit stage's config.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--only", nargs="+", default=None, help="restrict to these tasks")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out)
    t0 = time.time()
    runs = [run_seed(config, s, out, args.only) for s in args.seeds]
    tasks = [t for t in runs[0] if t != "macro"]
    summary: dict = {"seeds": args.seeds, "config": args.config}
    for t in [*tasks, "macro"]:
        summary[t] = {}
        for key in ("accuracy", "mcc", "f1"):
            vals = np.array([r[t][key] for r in runs])
            summary[t][key] = float(vals.mean())
            summary[t][f"{key}_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    summary["wall_s"] = round(time.time() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
