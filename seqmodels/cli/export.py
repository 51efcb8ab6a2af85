"""`seqmodels export`: a checkpoint's weights as safetensors plus config.json."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> dict:
    from seqmodels.checkpoint import export, load_exported

    out = export(args.ckpt, args.out)
    # Reload what was written: an export that cannot be loaded fails here, not at inference.
    n_params = sum(p.numel() for p in load_exported(out).parameters())
    print(f"exported {n_params:,} parameters to {out}")
    return {"n_parameters": float(n_params)}
