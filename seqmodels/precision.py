"""`--trainer.precision auto`: measure fp32 against bf16 autocast on the run's own model
and first batch, and train in whichever is faster.

Whether bf16 pays depends on the CPU (AMX or AVX512-BF16, or neither) and on the shape:
on a 2-core Zen 4 EPYC the baby model ran 0.91x in bf16 and a width-512 model 1.6x; on a
2-core AMX Xeon (with the attention of a training step in fp32, `sdpa`) 1.3-1.5x and
2.0-2.3x, so a fixed default is wrong somewhere. Lightning has no such mode; we time
forward + backward of the first training batch both ways (the weights, buffers, gradients and random
streams are restored afterwards, and nothing is logged) and keep bf16 only when it is
faster by `margin` (15%: the trial times forward + backward, and the optimiser step,
the same in both precisions, dilutes the gain), so it is not chosen where it is slower.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

AUTO = "auto"
_FLAG = "--trainer.precision"


def take_auto_precision(argv: Sequence[str]) -> tuple[list[str], bool]:
    """The command line with `--trainer.precision auto` (or `=auto`) replaced by fp32
    (the precision the trainer is built with), and whether it was there."""
    out, auto, it = [], False, iter(argv)
    for arg in it:
        if arg == _FLAG:
            value = next(it, None)
            if value == AUTO:
                auto = True
                value = "32-true"
            out += [arg] + ([value] if value is not None else [])
        elif arg == f"{_FLAG}={AUTO}":
            auto = True
            out.append(f"{_FLAG}=32-true")
        else:
            out.append(arg)
    return out, auto


def choose(fp32_s: float, bf16_s: float, margin: float) -> str:
    """The precision to train in, from the measured seconds per step."""
    return "bf16-mixed" if bf16_s * margin < fp32_s else "32-true"


def _step(module: pl.LightningModule, batch, bf16: bool, device_type: str) -> float:
    """Seconds of one forward + backward of `module.training_step(batch)`."""
    t0 = time.perf_counter()
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        out = module.training_step(batch, 0)
    loss = out["loss"] if isinstance(out, dict) else out
    loss.backward()
    if device_type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(
    module: pl.LightningModule, batch, rounds: int, device_type: str, warmup: int = 2
) -> tuple[float, float]:
    """Median seconds per forward + backward in fp32 and in bf16 autocast, alternating
    step by step after `warmup` untimed steps of each (blocks of one then the other
    misjudged a 0.85x bf16 as 1.1x under a busy machine's drift). Gradients are left
    set: the caller clears them."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(warmup + rounds):
        for bf16 in (False, True) if i % 2 == 0 else (True, False):
            t = _step(module, batch, bf16, device_type)
            if i >= warmup:
                times[bf16].append(t)
    return statistics.median(times[False]), statistics.median(times[True])


class AutoPrecision(pl.Callback):
    """Times the first training batch in fp32 and in bf16 autocast, then switches the
    trainer's precision plugin to bf16-mixed when that was faster by `margin`. The choice
    and both timings are logged (`precision/bf16`, `precision/fp32_step_s`,
    `precision/bf16_step_s`) and printed; under DDP rank 0's choice is broadcast."""

    def __init__(self, rounds: int = 5, margin: float = 1.15):
        self.rounds, self.margin = rounds, margin
        self.choice: str | None = None
        self.timings: dict[str, float] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx) -> None:
        if self.choice is not None:
            return
        if not pl_module.automatic_optimization:
            self.choice = "32-true"  # its training_step steps the optimiser itself
            rank_zero_info("precision auto: manual optimisation, staying in fp32")
            return
        device_type = pl_module.device.type
        saved = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        was_training = pl_module.training
        devices = [pl_module.device] if device_type == "cuda" else []
        # self.log during these trial steps would enter the epoch means: silence it
        pl_module.log = pl_module.log_dict = lambda *a, **k: None
        try:
            with torch.random.fork_rng(devices=devices):
                fp32, bf16 = measure(pl_module, batch, self.rounds, device_type)
        finally:
            del pl_module.log, pl_module.log_dict  # back to the class's methods
            pl_module.zero_grad(set_to_none=True)
            pl_module.load_state_dict(saved)
            pl_module.train(was_training)
        choice = trainer.strategy.broadcast(choose(fp32, bf16, self.margin))
        self.choice, self.timings = choice, {"fp32_step_s": fp32, "bf16_step_s": bf16}
        if choice == "bf16-mixed":
            from pytorch_lightning.plugins.precision import MixedPrecision

            trainer.strategy.precision_plugin = MixedPrecision("bf16-mixed", device_type)
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"precision/bf16": float(choice == "bf16-mixed"),
                 **{f"precision/{k}": v for k, v in self.timings.items()}},
                step=trainer.global_step,
            )  # fmt: skip
        rank_zero_info(
            f"precision auto: fp32 {fp32 * 1e3:.1f} ms, bf16 {bf16 * 1e3:.1f} ms per step "
            f"-> {choice}"
        )
