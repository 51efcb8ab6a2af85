"""A tiny training run for the resume test: trains to --steps, optionally SIGKILLs itself
after step --kill-at, and resumes from --resume. Run as a script (not collected)."""

import argparse
import os
import signal
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).parent))
from conftest import cyclic_examples  # noqa: E402

from seqmodels.checkpoint import AtomicCheckpointIO  # noqa: E402
from seqmodels.data import ExamplesDataModule  # noqa: E402
from seqmodels.training import SeqLM  # noqa: E402
from seqmodels.vocab import Vocab  # noqa: E402


class KillAt(pl.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--kill-at", type=int, default=0)
    ap.add_argument("--resume", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    vocab = Vocab(list("abcd"))
    dm = ExamplesDataModule(cyclic_examples(vocab, 200), vocab, batch_size=8, bucket=True)
    model = SeqLM(
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_len=32,
        dropout=0.1,
        warmup_steps=5,
        objective={
            "name": "mixture",
            "components": {"next_token": 1, "random_token": 1},
            "mode": "sample",
        },
    )
    callbacks = [
        ModelCheckpoint(
            dirpath=Path(args.root) / "checkpoints", every_n_train_steps=5, save_last=True
        )
    ]
    if args.kill_at:
        callbacks.append(KillAt(args.kill_at))
    trainer = pl.Trainer(
        max_steps=args.steps,
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=args.root,
        enable_model_summary=False,
    )
    trainer.fit(model, dm, ckpt_path=args.resume)
    torch.save(model.state_dict(), Path(args.root) / "final.pt")


if __name__ == "__main__":
    main()
