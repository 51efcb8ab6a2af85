"""TokenUnify pretraining on EM patch tokens: the core `SeqLM` with learnable targets.

Raw voxel targets are mostly unpredictable (on ISBI a patch's own mean explains most of
what a model learns), so `norm_pix=True` regresses each patch's voxels normalised by the
patch's own mean and standard deviation (MAE's norm-pix loss, He et al. 2022): the inputs
stay raw, the target is the patch's structure, not its brightness. Beside the validation
loss two trivial predictors are logged in the same target space, on the same scored
patches: `baseline_global_mean` (one constant: the mean of the scored voxels) and
`baseline_patch_mean` (each voxel predicted by its own patch's mean, an oracle a model
must beat to have learned anything beyond the DC term). With norm_pix both are about 1.

`center_pix=True` subtracts each patch's mean without dividing by its spread: norm-pix
scales a flat patch's noise up to unit variance, so on EM (most patches lie inside a
cell: texture and noise) the loss is dominated by what no model can predict; centred
targets keep membranes, which neighbouring patches do predict, the largest term.
"""

from __future__ import annotations

import dataclasses

import torch

from seqmodels.objectives import ObjectiveOutput
from seqmodels.training import SeqLM


def norm_pix(t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each token (last axis = its voxels) minus its mean, over its standard deviation."""
    mean = t.mean(-1, keepdim=True)
    var = t.var(-1, keepdim=True, unbiased=False)
    return (t - mean) / (var + eps).sqrt()


def baselines(targets: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
    """Weighted MSE of the global-mean and per-patch-mean predictors of `targets`."""
    t = targets.float()
    w = weights.float()
    denom = w.sum().clamp(min=1)
    per_tok = t.mean(-1)  # (B, L)
    glob = (per_tok * w).sum() / denom
    mse_global = (((t - glob) ** 2).mean(-1) * w).sum() / denom
    mse_patch = (((t - per_tok[..., None]) ** 2).mean(-1) * w).sum() / denom
    return {"baseline_global_mean": mse_global, "baseline_patch_mean": mse_patch}


def center_pix(t: torch.Tensor) -> torch.Tensor:
    """Each token (last axis = its voxels) minus its mean."""
    return t - t.mean(-1, keepdim=True)


class EMPretrainLM(SeqLM):
    """SeqLM for continuous EM patch tokens; `norm_pix` normalises each target patch,
    `center_pix` only removes its mean."""

    def __init__(self, *args, norm_pix: bool = False, center_pix: bool = False, **kwargs):
        if norm_pix and center_pix:
            raise ValueError("choose one target: norm_pix or center_pix")
        super().__init__(*args, **kwargs)
        self.norm_pix, self.center_pix = norm_pix, center_pix
        self.hparams["norm_pix"] = norm_pix
        self.hparams["center_pix"] = center_pix

    def part_loss(self, out: ObjectiveOutput) -> torch.Tensor:
        if out.targets.is_floating_point() and (self.norm_pix or self.center_pix):
            target = norm_pix if self.norm_pix else center_pix
            out = dataclasses.replace(out, targets=target(out.targets.float()))
        loss = super().part_loss(out)
        if not self.training and self._trainer is not None and out.targets.is_floating_point():
            split = "val" if self.trainer.validating else "test"
            bs = out.targets.shape[0]
            for name, v in baselines(out.targets, out.weights).items():
                self.log(f"{split}/{name}", v, batch_size=bs, sync_dist=True)
        return loss


def load_backbone(path: str):
    """The `SeqModel` of a SeqLM or EMPretrainLM checkpoint. (The core's
    `load_pretrained_model` accepts SeqLM checkpoints only, and rebuilds through SeqLM,
    whose constructor does not know norm_pix: the EM arguments are dropped here.)"""
    import inspect

    from seqmodels.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    cls = ckpt.get("seqmodels_class", "")
    if not (cls.endswith(".SeqLM") or cls.endswith(".EMPretrainLM")):
        raise ValueError(f"{path}: a pretrained backbone must be a SeqLM checkpoint, not {cls!r}")
    keys = inspect.signature(SeqLM.__init__).parameters
    hp = {k: v for k, v in SeqLM.hparams_for_load(ckpt).items() if k in keys}
    lm = SeqLM(**hp)
    lm.load_state_dict(ckpt["state_dict"])
    return lm.model
