"""Checkpoints: atomic writes, weights-only loads with clear errors, and export to
safetensors for inference."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io import TorchCheckpointIO


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or not a seqmodels checkpoint."""


# Classes that moved, from the checkpoints of earlier versions to today's.
MOVED_CLASSES = {
    "seqmodels.module.SeqLM": "seqmodels.training.SeqLM",
    "seqmodels.module.FinetuneModule": "seqmodels.training.FinetuneModule",
}


def upgrade_checkpoint(ckpt: dict) -> dict:
    """Bring a checkpoint of an earlier layout to today's, in place (a no-op on current
    ones). seqmodels.module.SeqLM held the model's layers itself: its keys gain the
    `model.` prefix of `SeqLM.model`. seqmodels.module.FinetuneModule ran the backbone
    causally unless pooling was "mean", and had no default condition (zeros now)."""
    name = ckpt.get("seqmodels_class")
    if name not in MOVED_CLASSES:
        return ckpt
    if name.endswith(".SeqLM"):
        ckpt["state_dict"] = {f"model.{k}": v for k, v in ckpt["state_dict"].items()}
    else:
        hp = ckpt.setdefault("hyper_parameters", {})
        hp.setdefault("attention", "bidirectional" if hp.get("pooling") == "mean" else "causal")
        backbone = ckpt.get("seqmodels_backbone") or hp.get("backbone_config") or {}
        d_cond = backbone.get("d_cond")
        if d_cond:
            ckpt["state_dict"].setdefault("default_cond", torch.zeros(d_cond))
    ckpt["seqmodels_class"] = MOVED_CLASSES[name]
    return ckpt


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over it: a kill at
    any moment leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """torch.load with weights_only=True; every failure becomes a CheckpointError naming
    the file and what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable weights-only checkpoint (corrupt, truncated, or holding "
            f"arbitrary Python objects): {first}"
        ) from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return upgrade_checkpoint(ckpt)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic saves, weights-only loads."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        save_atomic(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_checkpoint(path, map_location=map_location or "cpu")


def _model_class(ckpt: dict, path: Path) -> type:
    name = ckpt.get("seqmodels_class")
    if not name:
        raise CheckpointError(f"{path}: not a seqmodels checkpoint (no seqmodels_class)")
    module, _, cls = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as err:
        raise CheckpointError(f"{path}: model class {name} cannot be imported: {err}") from err
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise CheckpointError(f"{path}: {name} is not a torch module")
    return found


def load_module(path: str | Path, map_location: Any = "cpu") -> torch.nn.Module:
    """The LightningModule stored in a seqmodels checkpoint, in eval mode."""
    path = Path(path)
    ckpt = load_checkpoint(path, map_location)
    cls = _model_class(ckpt, path)
    hp = (
        cls.hparams_for_load(ckpt) if hasattr(cls, "hparams_for_load") else ckpt["hyper_parameters"]
    )
    model = cls(**hp)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {cls.__name__}: {err}") from err
    return model.eval()


def export(path: str | Path, out_dir: str | Path) -> Path:
    """A checkpoint to `out_dir/model.safetensors` + `config.json` (class and
    hyperparameters): what inference needs, without optimizer state or pickles."""
    from safetensors.torch import save_file

    path, out_dir = Path(path), Path(out_dir)
    ckpt = load_checkpoint(path)
    cls = _model_class(ckpt, path)
    hp = (
        cls.hparams_for_load(ckpt) if hasattr(cls, "hparams_for_load") else ckpt["hyper_parameters"]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared storage (tied embeddings): store each tensor once.
    seen, tensors = {}, {}
    for k, v in ckpt["state_dict"].items():
        key = (v.data_ptr(), v.shape)
        if key in seen:
            continue
        seen[key] = k
        tensors[k] = v.contiguous()
    save_file(tensors, str(out_dir / "model.safetensors"))
    config = {
        "class": ckpt["seqmodels_class"],
        "hyper_parameters": hp,
        "tied": {
            k: seen[(v.data_ptr(), v.shape)]
            for k, v in ckpt["state_dict"].items()
            if seen[(v.data_ptr(), v.shape)] != k
        },
    }
    (out_dir / "config.json").write_text(json.dumps(config, indent=1, default=list))
    return out_dir


def load_exported(out_dir: str | Path) -> torch.nn.Module:
    """The model saved by `export`, in eval mode."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    try:
        config = json.loads((out_dir / "config.json").read_text())
        state = load_file(str(out_dir / "model.safetensors"))
        for k, src in config.get("tied", {}).items():
            state[k] = state[src]
        old = {"seqmodels_class": config["class"], "state_dict": state}
        upgraded = upgrade_checkpoint({**old, "hyper_parameters": config["hyper_parameters"]})
        module, _, cls = upgraded["seqmodels_class"].rpartition(".")
        model_cls = getattr(importlib.import_module(module), cls)
    except (OSError, KeyError, ValueError, ImportError, AttributeError) as err:
        raise CheckpointError(f"{out_dir}: not a seqmodels export: {err}") from err
    model = model_cls(**upgraded["hyper_parameters"])
    model.load_state_dict(upgraded["state_dict"])
    return model.eval()
