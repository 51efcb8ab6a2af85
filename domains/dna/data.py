"""DNA datamodules on the core TokenDataModule.

`DNAPretrainDataModule`: windows of sequence files (or the synthetic set) as
`<bos> bases <eos>` for next-token (or any core objective), with reverse-complement copies
of the training windows. `DNATaskDataModule`: labelled tasks, either Omni-DNA style
(`<bos> <task:T> bases <sep> <label:y>*r <eos>`, loss only on the label tokens) or for
classification heads (`task`/`label` fields for the core FinetuneModule).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from domains.dna.alphabet import BasePolicy
from domains.dna.kmers import shares_kmer
from domains.dna.readers import ReadReport, read_records, windows
from domains.dna.synthetic import synthetic_examples
from domains.dna.tasks import PROMOTER_TASKS, LabelledTask, load_task
from domains.dna.tokenizers import (
    BOS,
    EOS,
    SEP,
    DNATokenizer,
    build_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_from_vocab,
)
from seqmodels.checkpoint import load_checkpoint
from seqmodels.data import TokenDataModule
from seqmodels.paths import data_path
from seqmodels.vocab import Vocab

TASK_PRESETS: dict[str, list[dict[str, Any]]] = {
    "promoters": PROMOTER_TASKS,
    # Three planted-motif tasks: learnable by a tiny model in a few CPU minutes.
    "synthetic": [
        {"name": t, "synthetic": t, "n": 800, "length": 100} for t in ("tata", "ebox", "gcbox")
    ],
}


def task_token(name: str) -> str:
    return f"<task:{name}>"


def label_token(label: str) -> str:
    return f"<label:{label}>"


def resolve_tasks(tasks: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A preset name ('promoters', 'synthetic') or explicit task specs."""
    if isinstance(tasks, str):
        if tasks not in TASK_PRESETS:
            raise ValueError(f"unknown task preset {tasks!r}; have {sorted(TASK_PRESETS)}")
        return TASK_PRESETS[tasks]
    return list(tasks)


def _data_dir(data_dir: str | None) -> Path | None:
    return Path(data_dir) if data_dir else data_path("dna")


def load_tasks(
    tasks: str | list[dict[str, Any]],
    data_dir: str | None = None,
    policy: BasePolicy | None = None,
    seed: int = 0,
    max_per_label: int | None = None,
    only: Sequence[str] | None = None,
    split: str = "overlap",
    split_k: int = 32,
    split_strand: str = "both",
) -> list[LabelledTask]:
    """The tasks' records and their splits (see `domains.dna.tasks.load_task`)."""
    specs = resolve_tasks(tasks)
    if only:
        unknown = set(only) - {s["name"] for s in specs}
        if unknown:
            raise ValueError(
                f"unknown task(s) {sorted(unknown)}; have {[s['name'] for s in specs]}"
            )
        specs = [s for s in specs if s["name"] in only]
    return [
        load_task(
            s,
            _data_dir(data_dir),
            policy or BasePolicy(),
            seed,
            max_per_label=max_per_label,
            split=split,
            split_k=split_k,
            split_strand=split_strand,
        )
        for s in specs
    ]


def report_skipped(errors: Sequence[str], what: str, show: int = 5) -> None:
    """Bad records were left out: say how many and show the first few (file and record)."""
    if errors:
        lines = "\n  ".join(errors[:show]) + (
            f"\n  ... and {len(errors) - show} more" if len(errors) > show else ""
        )
        print(f"{what}: skipped {len(errors)} bad record(s):\n  {lines}", file=sys.stderr)


def _policy(ambiguous: str, lowercase: str) -> BasePolicy:
    return BasePolicy(ambiguous=ambiguous, lowercase=lowercase)


class _DNAData(TokenDataModule):
    """Shared tokenizer handling: build (or train BPE and save it), or read a checkpoint's;
    and the task split settings, shared by pretraining (what to hold out) and finetuning.

    split / split_k / split_strand / split_seed: how tasks are split (`domains.dna.splits`;
        default overlap-aware on 32-mers of both strands). `split_seed` is separate from the
        training `seed`, so training seeds vary while the split stays fixed, and pretraining
        and finetuning configs that give the same value see the same split (checked when a
        finetuning config names its pretraining checkpoint).
    """

    def __init__(
        self,
        tokenizer: str = "char",
        k: int = 6,
        bpe_vocab_size: int = 4096,
        tokenizer_file: str | None = None,
        ambiguous: str = "n",
        lowercase: str = "upper",
        torch_threads: int | None = None,
        split: str = "overlap",
        split_k: int = 32,
        split_strand: str = "both",
        split_seed: int = 0,
        max_per_label: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.split_method, self.split_k, self.split_strand = split, split_k, split_strand
        self.split_seed, self.max_per_label = split_seed, max_per_label
        if torch_threads:
            # The core has no thread setting; on a small shared CPU, oversubscribed intra-op
            # threads made training ~10x slower than one thread (measured), so recipes set 1.
            import torch

            torch.set_num_threads(torch_threads)
        self.tokenizer_kind, self.k, self.bpe_vocab_size = tokenizer, k, bpe_vocab_size
        self.tokenizer_file = tokenizer_file
        self.policy = _policy(ambiguous, lowercase)
        self.tokenizer: DNATokenizer | None = None

    def split_settings(self) -> dict[str, Any]:
        return {
            "split": self.split_method,
            "split_k": self.split_k,
            "split_strand": self.split_strand,
            "split_seed": self.split_seed,
            "max_per_label": self.max_per_label,
        }

    def _load_tasks(self, tasks, only: Sequence[str] | None = None) -> list[LabelledTask]:
        return load_tasks(
            tasks,
            self.data_dir,
            self.policy,
            self.split_seed,
            self.max_per_label,
            only,
            self.split_method,
            self.split_k,
            self.split_strand,
        )

    def _make_tokenizer(self, train_seqs: Sequence[str]) -> DNATokenizer:
        if self.tokenizer_file and Path(self.tokenizer_file).is_file():
            return load_tokenizer(self.tokenizer_file)
        tok = build_tokenizer(
            self.tokenizer_kind, self.k, self.bpe_vocab_size, self.policy, train_seqs
        )
        if self.tokenizer_file:
            save_tokenizer(tok, self.tokenizer_file)
        return tok


class DNAPretrainDataModule(_DNAData):
    """Pretraining windows.

    sources: sequence files (FASTA/FASTQ/GenBank/CSV, .gz or not; relative paths against the
        shared `dna/` folder) and/or "synthetic".
    tasks: task specs or a preset whose *training-split* sequences are added. Every window
        (from the tasks or the sources) sharing a `split_k`-mer (on `split_strand`) with one
        of their val/test sequences is dropped, so finetuning tests stay unseen; the split
        is the one the finetuning datamodule makes from the same split settings.
    window / stride: records longer than `window` bases are cut (stride default = window).
    rc_augment: add the reverse complement of every training window.
    genome: reference FASTA files (bgzipped ok; `domains.dna.genome`): windows that never
        cross a run of N, `soft_mask` policy for lowercase repeats ("upper", "n", "drop"
        windows with more than `max_masked` masked), `shifts` extra seeded window grids,
        and a hold-out of whole `holdout_block`-base blocks.
    The pretraining hold-out (val/test windows) is drawn with `split_seed` as well.
    """

    def __init__(
        self,
        sources: list[str] | None = None,
        tasks: str | list[dict[str, Any]] | None = None,
        data_dir: str | None = None,
        window: int = 256,
        stride: int | None = None,
        rc_augment: bool = True,
        max_sequences: int | None = None,
        genome: list[str] | None = None,
        soft_mask: str = "upper",
        max_masked: float = 0.5,
        shifts: int = 0,
        holdout_block: int = 100_000,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.genome, self.soft_mask, self.max_masked = genome or [], soft_mask, max_masked
        self.shifts, self.holdout_block = shifts, holdout_block
        self.sources, self.tasks, self.data_dir = sources or [], tasks, data_dir
        self.window, self.stride, self.rc_augment = window, stride, rc_augment
        self.max_sequences = max_sequences
        self.read_errors: list[str] = []
        self.n_dropped_overlap = 0

    def _sequences(self) -> tuple[list[str], list[str]]:
        seqs: list[str] = []
        held_out: list[str] = []
        for task in self._load_tasks(self.tasks) if self.tasks else []:
            self.read_errors += task.errors
            train, _ = task.subset("train")
            seqs += train
            held_out += [s for s, sp in zip(task.seqs, task.split) if sp != "train"]
        for src in self.sources:
            if src == "synthetic":
                seqs += [e.seq for e in synthetic_examples(seed=self.seed)]
                continue
            path = Path(src)
            if not path.is_absolute() and _data_dir(self.data_dir) is not None:
                path = _data_dir(self.data_dir) / path
            report = ReadReport()
            seqs += [
                r.seq
                for r in read_records(path, policy=self.policy, on_error="skip", report=report)
            ]
            self.read_errors += report.errors
        report_skipped(self.read_errors, "DNAPretrainDataModule")
        if not seqs and not self.genome:
            raise ValueError("DNAPretrainDataModule: no sequences (give sources, genome or tasks)")
        return seqs, held_out

    def _genome_windows(self) -> list[tuple[str, str | None]]:
        from domains.dna.genome import genome_windows, read_genome

        out: list[tuple[str, str | None]] = []
        for src in self.genome:
            path = Path(src)
            if not path.is_absolute() and _data_dir(self.data_dir) is not None:
                path = _data_dir(self.data_dir) / path
            wins = genome_windows(
                read_genome(path),
                self.window,
                self.stride,
                self.shifts,
                self.soft_mask,
                self.max_masked,
                self.holdout_block,
                (self.val_fraction, self.test_fraction),
                self.split_seed,
            )
            out += [(w.seq, w.split) for w in wins]
        return out

    def build(self) -> list[dict]:
        seqs, held_out = self._sequences()
        seen: set[str] = set()
        wins: list[str] = []
        for s in seqs:
            for w in windows(s, self.window, self.stride, min_len=8):
                if w not in seen:
                    seen.add(w)
                    wins.append(w)
        fixed = [(w, sp) for w, sp in self._genome_windows() if w not in seen]
        if held_out:
            keep = ~shares_kmer(wins, held_out, self.split_k, self.split_strand)
            keep_fixed = ~shares_kmer(
                [w for w, _ in fixed], held_out, self.split_k, self.split_strand
            )
            self.n_dropped_overlap = int((~keep).sum() + (~keep_fixed).sum())
            wins = [w for w, ok in zip(wins, keep) if ok]
            fixed = [f for f, ok in zip(fixed, keep_fixed) if ok]
            print(
                f"DNAPretrainDataModule: dropped {self.n_dropped_overlap} window(s) sharing a "
                f"{self.split_k}-mer with a task's val/test sequence",
                file=sys.stderr,
            )
        rng = np.random.default_rng(self.split_seed)
        order = rng.permutation(len(wins))
        if self.max_sequences:
            order = order[: self.max_sequences]
        wins = [wins[i] for i in order]
        n_val = round(len(wins) * self.val_fraction)
        n_test = round(len(wins) * self.test_fraction)
        splits = ["val"] * n_val + ["test"] * n_test + ["train"] * (len(wins) - n_val - n_test)
        # Genome windows keep their block split (a shifted window must not leak into val).
        wins += [w for w, _ in fixed]
        splits += [sp for _, sp in fixed]
        self.tokenizer = self._make_tokenizer([w for w, sp in zip(wins, splits) if sp == "train"])
        self.vocab = self.tokenizer.vocab()
        examples = []
        rcs = self.tokenizer.encode_rc_batch(wins) if self.rc_augment else None
        for i, ids in enumerate(self.tokenizer.encode_batch(wins)):
            split = splits[i]
            examples.append({"ids": [BOS, *ids.tolist(), EOS], "split": split})
            if rcs is not None and split == "train":
                examples.append({"ids": [BOS, *rcs[i].tolist(), EOS], "split": "train"})
        return examples


class DNATaskDataModule(_DNAData):
    """Labelled tasks for finetuning.

    mode "omni": one `<task:NAME>` token per task and one `<label:Y>` token per label are
        appended to the vocabulary (existing ids unchanged, so a pretrained model only grows
        rows); an example is `<bos> <task> bases <sep> <label>*label_repeat <eos>` with
        `loss_mask` on the label tokens only. `task_position="after"` gives Omni-DNA's own
        layout, `<bos> bases <task> <sep> <label>*r <eos>` (the task is read after the
        sequence); the default "before" lets a causal model read the sequence knowing the
        task. `label_repeat` 10 is Omni-DNA's setting.
    mode "head": `<bos> bases <eos>` with `task` and `label` ints, for FinetuneModule.
    pretrained: a checkpoint whose vocabulary (and tokenizer) is extended, so ids match.
    only: restrict to these task names (single-task models over the same splits).
    rc_augment: also train on the reverse complement of each training sequence.
    """

    def __init__(
        self,
        tasks: str | list[dict[str, Any]] = "synthetic",
        mode: str = "omni",
        pretrained: str | None = None,
        data_dir: str | None = None,
        only: list[str] | None = None,
        label_repeat: int = 1,
        task_position: str = "before",
        rc_augment: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if mode not in ("omni", "head"):
            raise ValueError(f"mode must be 'omni' or 'head', got {mode!r}")
        if task_position not in ("before", "after"):
            raise ValueError(f"task_position must be 'before' or 'after', got {task_position!r}")
        if label_repeat < 1:
            raise ValueError(f"label_repeat must be >= 1, got {label_repeat}")
        self.task_specs, self.mode, self.pretrained = tasks, mode, pretrained
        self.data_dir, self.only, self.label_repeat = data_dir, only, label_repeat
        self.task_position, self.rc_augment = task_position, rc_augment
        self.tasks: list[LabelledTask] = []

    def check_pretraining_split(self) -> None:
        """The pretraining stage must have held out this split: same split settings.

        Its config.yaml sits two folders above the checkpoint (a recipe / `seqmodels fit`
        layout); without one there is nothing to compare, which is allowed.
        """
        config = Path(self.pretrained).parent.parent / "config.yaml"
        if not config.is_file():
            return
        import yaml

        args = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("init_args")
        if not args or not args.get("tasks"):
            return
        ours = self.split_settings()
        defaults = inspect.signature(_DNAData.__init__).parameters
        theirs = {k: args.get(k, defaults[k].default) for k in ours}
        if theirs != ours:
            diff = {k: (theirs[k], ours[k]) for k in ours if theirs[k] != ours[k]}
            raise ValueError(
                f"{config}: pretraining split settings differ from finetuning "
                f"(pretrain, finetune): {diff}; the pretraining corpus would hold out "
                "another split and finetuning test sequences could be pretraining data"
            )

    def _base_vocab(self, train_seqs: list[str]) -> Vocab:
        if self.pretrained:
            hp = load_checkpoint(self.pretrained).get("hyper_parameters", {})
            if "vocab" not in hp and "backbone_config" in hp:
                hp = hp["backbone_config"]
            if not hp.get("vocab"):
                raise ValueError(f"{self.pretrained}: checkpoint stores no vocabulary")
            vocab = Vocab.from_dict(hp["vocab"])
            self.tokenizer = tokenizer_from_vocab(vocab.tokens, self.tokenizer_file)
            return vocab
        self.tokenizer = self._make_tokenizer(train_seqs)
        return self.tokenizer.vocab()

    def task_layout(self) -> list[dict[str, Any]]:
        """Per task: name, labels, and in omni mode the task token id and label token ids."""
        self._ensure()
        out = []
        for t in self.tasks:
            d: dict[str, Any] = {"name": t.name, "labels": t.labels}
            if self.mode == "omni":
                d["task_id"] = self.vocab.token_to_id(task_token(t.name))
                d["label_ids"] = [self.vocab.token_to_id(label_token(y)) for y in t.labels]
            out.append(d)
        return out

    def head_tasks(self) -> list[dict[str, Any]]:
        """FinetuneModule task specs matching this datamodule (mode 'head')."""
        return [
            {"name": t.name, "kind": "classification", "n_outputs": len(t.labels)}
            for t in self.tasks
        ]

    def encode_example(self, task_index: int, seq_ids: np.ndarray, label: int | None) -> dict:
        """One example; `label=None` gives the prompt up to and including <sep> (omni)."""
        t = self.tasks[task_index]
        if self.mode == "head":
            ex: dict[str, Any] = {"ids": [BOS, *seq_ids.tolist(), EOS], "task": task_index}
            if label is not None:
                ex["label"] = int(label)
            return ex
        tid = self.vocab.token_to_id(task_token(t.name))
        if self.task_position == "before":
            prompt = [BOS, tid, *seq_ids.tolist(), SEP]
        else:
            prompt = [BOS, *seq_ids.tolist(), tid, SEP]
        if label is None:
            return {"ids": prompt}
        lab = self.vocab.token_to_id(label_token(t.labels[label]))
        ids = prompt + [lab] * self.label_repeat + [EOS]
        mask = [False] * len(prompt) + [True] * self.label_repeat + [False]
        return {"ids": ids, "loss_mask": mask, "task": task_index}

    def build(self) -> list[dict]:
        if self.pretrained:
            self.check_pretraining_split()
        self.tasks = self._load_tasks(self.task_specs, self.only)
        for t in self.tasks:
            report_skipped(t.errors, f"task {t.name!r}")
        train_seqs = [s for t in self.tasks for s in t.subset("train")[0]]
        self.vocab = self._base_vocab(train_seqs)
        if self.mode == "omni":
            self.vocab.add_tokens(task_token(t.name) for t in self.tasks)
            self.vocab.add_tokens(label_token(y) for t in self.tasks for y in t.labels)
        examples = []
        for ti, t in enumerate(self.tasks):
            rcs = self.tokenizer.encode_rc_batch(t.seqs) if self.rc_augment else None
            encoded = self.tokenizer.encode_batch(t.seqs)
            for i, (seq_ids, y, split) in enumerate(zip(encoded, t.y, t.split)):
                ex = self.encode_example(ti, seq_ids, int(y))
                examples.append({**ex, "split": split})
                if rcs is not None and split == "train":
                    examples.append({**self.encode_example(ti, rcs[i], int(y)), "split": "train"})
        return examples
