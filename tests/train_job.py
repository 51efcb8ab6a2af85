"""A tiny training run for the resume and DDP tests: trains to --steps, optionally SIGKILLs
itself after step --kill-at, and resumes from --resume. Writes the final weights
(final.pt) and, per rank, what this process ran (run_rank<r>.json: the step it started
at, the steps it trained, and the examples of each batch). Run as a script."""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.strategies import DDPStrategy

sys.path.insert(0, str(Path(__file__).parent.parent))

from seqmodels.checkpoint import AtomicCheckpointIO  # noqa: E402
from seqmodels.data import ExamplesDataModule  # noqa: E402
from seqmodels.training import SeqLM  # noqa: E402
from seqmodels.vocab import Vocab  # noqa: E402


def unique_examples(vocab: Vocab, n: int) -> list[dict]:
    """n distinct strings: example i starts with i in base 4 (letters a-d), then cycles
    a->b->c->d for a length drawn from i, so every batch row names its example."""
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        digits = ["abcd"[(i // 4**k) % 4] for k in range(4)]
        tail = ["abcd"[(i + j) % 4] for j in range(int(torch.randint(0, 8, (1,), generator=g)))]
        out.append({"ids": vocab.encode(digits + tail, add_bos=True, add_eos=True)})
    return out


class Record(pl.Callback):
    """What this process trained: start step, steps, and the examples of each batch."""

    def __init__(self, path: Path, kill_at: int):
        self.path, self.kill_at = path, kill_at
        self.run = {"start_step": None, "steps": 0, "batches": []}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.run["start_step"] is None:
            self.run["start_step"] = trainer.global_step
        rows = [r[p].tolist() for r, p in zip(batch["ids"], batch["pad"])]
        self.run["batches"].append({"step": trainer.global_step, "rows": rows})

    def on_train_batch_end(self, trainer, *args):
        self.run["steps"] += 1
        if trainer.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, trainer, module):
        self.path.write_text(json.dumps(self.run))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--schedule-steps", type=int, default=None, help="SeqLM max_steps")
    ap.add_argument("--kill-at", type=int, default=0)
    ap.add_argument("--every", type=int, default=5, help="checkpoint every N steps")
    ap.add_argument("--keep", action="store_true", help="keep every checkpoint, not only last")
    ap.add_argument("--devices", type=int, default=1, help=">1: DDP on CPU (gloo)")
    ap.add_argument("--resume", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    vocab = Vocab(list("abcd"))
    dm = ExamplesDataModule(unique_examples(vocab, 200), vocab, batch_size=8, bucket=True)
    model = SeqLM(
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_len=32,
        dropout=0.1,
        warmup_steps=5,
        max_steps=args.schedule_steps,
        objective={
            "name": "mixture",
            "components": {"next_token": 1, "random_token": 1},
            "mode": "sample",
        },
    )
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    callbacks = [
        ModelCheckpoint(
            dirpath=root / "checkpoints",
            every_n_train_steps=args.every,
            save_last=True,
            save_top_k=-1 if args.keep else 1,
        ),
        Record(root / f"run_rank{rank}.json", args.kill_at),
    ]
    ddp = args.devices > 1
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=args.devices,
        strategy=DDPStrategy(find_unused_parameters=True) if ddp else "auto",
        use_distributed_sampler=False,  # the resumable sampler shards by rank itself
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=args.root,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm, ckpt_path=args.resume)
    if trainer.is_global_zero:
        torch.save(model.state_dict(), root / "final.pt")


if __name__ == "__main__":
    main()
