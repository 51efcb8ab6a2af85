"""Is the TokenUnify pretext task learnable here? Pretrain a few settings for the same
number of steps and report each validation loss against the trivial predictors logged
beside it (EMPretrainLM: global mean, each patch's own mean; about 1 with norm-pix).

A pretrained backbone can only help segmentation if its pretext loss falls below these
baselines; issue 13's earlier runs (60-150 steps) stayed at 1.000. Each setting is an
ordinary `seqmodels fit` of recipes/em/pretrain_isbi_mixture.yaml with overrides, so
the figures are the recipe's own, and the validation crops are disjoint from training
crops (domains/em/README.md).

  python bench/em_pretext.py --steps 300 --out runs/em_pretext \\
      --setting norm:patch=[1,16,16] center:norm_pix=false,center_pix=true \\
      p8:patch=[1,8,8],crop=[8,64,64]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

RECIPE = "recipes/em/pretrain_isbi_mixture.yaml"
KEYS = {  # short setting keys -> where they live in the recipe's config
    "patch": ("data", "init_args", "patch"),
    "crop": ("data", "init_args", "crop"),
    "ratio": ("model", "init_args", "objective", "components", 0, "ratio"),
    "lr": ("model", "init_args", "lr"),
    "d_model": ("model", "init_args", "d_model"),
    "norm_pix": ("model", "init_args", "norm_pix"),
    "center_pix": ("model", "init_args", "center_pix"),
}


def configured(base: dict, setting: dict[str, str], steps: int, seed: int, root: Path) -> dict:
    """The recipe's config with the setting, the step budget and the seed applied."""
    cfg = json.loads(json.dumps(base))
    for key, value in setting.items():
        *path, last = KEYS[key]
        node = cfg
        for p in path:
            node = node[p]
        node[last] = yaml.safe_load(value)
    cfg["seed_everything"] = seed
    cfg["model"]["init_args"]["max_steps"] = steps
    cfg["trainer"].update(
        max_steps=steps, val_check_interval=max(1, steps // 4), check_val_every_n_epoch=None
    )
    cfg["trainer"]["default_root_dir"] = str(root)
    cfg.pop("checkpoint", None)
    return cfg


def parse_setting(text: str) -> tuple[str, dict[str, str]]:
    """'name:key=value,key=value' (values may hold commas inside brackets)."""
    name, _, rest = text.partition(":")
    out, depth, cur = {}, 0, ""
    for ch in rest + ",":
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            if cur:
                key, _, value = cur.partition("=")
                if key not in KEYS:
                    raise SystemExit(f"unknown setting key {key!r}; known: {sorted(KEYS)}")
                out[key] = value
            cur = ""
        else:
            cur += ch
    return name, out


def last_val(metrics_csv: Path) -> dict[str, float]:
    """The last validation row's losses and baselines."""
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get("val/loss")]
    if not rows:
        raise SystemExit(f"{metrics_csv}: no validation row")
    r = rows[-1]
    keys = ("val/loss", "val/baseline_patch_mean", "val/baseline_global_mean")
    return {"step": int(r["step"]), **{k: float(r[k]) for k in keys if r.get(k)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--setting", nargs="+", required=True, help="name:key=value,...")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    base = yaml.safe_load(Path(RECIPE).read_text())
    results = {}
    for name, setting in map(parse_setting, args.setting):
        stage = out / name
        stage.mkdir(parents=True, exist_ok=True)
        cfg = configured(base, setting, args.steps, args.seed, stage)
        (stage / "config_in.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [sys.executable, "-m", "seqmodels", "--threads", "1", "fit", "--config",
               str(stage / "config_in.yaml")]  # fmt: skip
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        found = sorted(stage.glob("lightning_logs/version_*/metrics.csv"))
        r = last_val(found[-1])
        r["seconds"] = round(time.perf_counter() - t, 1)
        r["setting"] = setting
        base = r.get("val/baseline_patch_mean")
        if base:
            r["loss_over_patch_mean"] = round(r["val/loss"] / base, 4)
        results[name] = r
        print(name, json.dumps(r), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretext.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({"steps": args.steps, "seed": args.seed, "results": results}))


if __name__ == "__main__":
    main()
