"""FinetuneModule: attention independent of pooling, backbone / layer-wise learning rates,
partial freezing, a default condition, and dense (per-position) heads."""

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.backbones import AttentionSpec
from seqmodels.checkpoint import load_module
from seqmodels.data import ExamplesDataModule
from seqmodels.training import FinetuneModule, SeqLM
from seqmodels.vocab import Vocab
from tests.conftest import cyclic_examples

BACKBONE = {"d_model": 16, "n_layers": 2, "n_heads": 2, "max_len": 32}


def _trainer(steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        **kw,
    )


def _ft(vocab: Vocab, **kw) -> FinetuneModule:
    tasks = kw.pop("tasks", [{"name": "parity", "kind": "classification"}])
    cfg = {**BACKBONE, "vocab_size": len(vocab), **kw.pop("backbone", {})}
    return FinetuneModule(tasks=tasks, backbone_config=cfg, **kw)


def _batch(vocab: Vocab, n: int = 4) -> dict:
    dm = ExamplesDataModule(cyclic_examples(vocab, n), vocab, batch_size=n, val_fraction=0)
    dm.setup()
    return dm.collate(dm.splits["train"][:n])


@pytest.mark.parametrize("pooling", ["first", "mean", "last"])
def test_attention_is_its_own_option(toy_vocab, pooling):
    """pooling="first" used to force causal attention (the pooled state saw only <bos>)."""
    batch = _batch(toy_vocab)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["ids"][:, 2] = toy_vocab.token_to_id("d")  # a later position than the first
    for attention in ("bidirectional", "causal"):
        torch.manual_seed(0)
        ft = _ft(toy_vocab, pooling=pooling, attention=attention).eval()
        a, b = ft(batch)["parity"][1], ft(changed)["parity"][1]
        sees_later = not torch.allclose(a, b)
        if attention == "bidirectional" or pooling != "first":
            assert sees_later, (pooling, attention)
        else:
            assert not sees_later  # causal: the first position sees only itself
    ft = _ft(toy_vocab, pooling=pooling, attention="prefix", prefix_len=3).eval()
    assert ft(batch)["parity"][1].shape == (4, 2)


def _group_lrs(ft: FinetuneModule) -> tuple[set, list]:
    opt = ft.optimizers().optimizer if ft._trainer else ft.configure_optimizers()["optimizer"]
    backbone = {id(p) for p in ft.lm.parameters()}
    head, bb = set(), []
    for g in opt.param_groups:
        kind = {id(p) in backbone for p in g["params"]}
        assert len(kind) == 1, "a group mixes backbone and head parameters"
        (bb.append(g["initial_lr"]) if kind.pop() else head.add(g["initial_lr"]))
    return head, bb


def test_backbone_lr_is_honoured_and_layer_decay_scales_it(toy_vocab):
    pl.seed_everything(0)
    dm = ExamplesDataModule(cyclic_examples(toy_vocab, 64), toy_vocab, batch_size=8)
    ft = _ft(toy_vocab, lr=1e-2, backbone_lr=0.0, warmup_steps=1)
    before = {k: v.clone() for k, v in ft.state_dict().items()}
    _trainer(5).fit(ft, dm)
    head, bb = _group_lrs(ft)
    assert head == {1e-2} and set(bb) == {0.0}
    after = ft.state_dict()
    for k, v in after.items():
        moved = not torch.equal(v, before[k])
        if k.startswith("lm."):
            assert not moved, f"{k} trained with backbone_lr=0"
    assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith("heads."))

    ft = _ft(toy_vocab, lr=1e-2, backbone_lr=1e-3, layer_lr_decay=0.5)
    _head, bb = _group_lrs(ft)
    # depths: embeddings 0, layers 1..2, final norm 3: lr 1e-3 * 0.5 ** (3 - depth)
    assert sorted(set(bb)) == pytest.approx([1.25e-4, 2.5e-4, 5e-4, 1e-3])


def test_freeze_fraction_holds_the_backbone_then_trains_it(toy_vocab):
    pl.seed_everything(0)
    dm = ExamplesDataModule(cyclic_examples(toy_vocab, 64), toy_vocab, batch_size=8)
    ft = _ft(toy_vocab, lr=1e-2, freeze_fraction=0.5, warmup_steps=1, max_steps=8)
    snaps = []

    class Snap(pl.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            snaps.append(module.lm.backbone.blocks[0].attn.qkv.weight.detach().clone())

    start = ft.lm.backbone.blocks[0].attn.qkv.weight.detach().clone()
    _trainer(8, callbacks=[Snap()]).fit(ft, dm)
    assert all(torch.equal(s, start) for s in snaps[:4])  # steps 1-4 of 8: frozen
    assert not torch.equal(snaps[-1], start)  # then trained


def test_conditioned_backbone_gets_a_learned_default_condition(toy_vocab, tmp_path):
    pl.seed_everything(0)
    ex = cyclic_examples(toy_vocab, 40, cond=True)
    pre = SeqLM(**BACKBONE, warmup_steps=1)
    trainer = _trainer(2)
    trainer.fit(pre, ExamplesDataModule(ex, toy_vocab, batch_size=8))
    trainer.save_checkpoint(tmp_path / "pre.ckpt")
    tasks = [{"name": "parity", "kind": "classification"}]
    ft = FinetuneModule(tasks=tasks, pretrained=str(tmp_path / "pre.ckpt"), attention="causal")
    batch = _batch(toy_vocab)  # no cond
    ft.eval()
    zeros = torch.zeros(len(batch["ids"]), 1)
    mask = AttentionSpec("causal", pad=batch["pad"])
    expected = pre.model.eval().hidden(ids=batch["ids"], cond=zeros, mask=mask)
    torch.testing.assert_close(ft.hidden(batch), expected)
    ft.train()
    ft._losses(batch, None).backward()
    assert ft.default_cond.grad is not None and ft.default_cond.grad.abs().sum() > 0


def _dense_examples(vocab: Vocab, n: int) -> list[dict]:
    """Per-position labels: is the *next* token a 'c'? (needs bidirectional context;
    the last position has no next token and is masked out)."""
    out = []
    for e in cyclic_examples(vocab, n):
        ids = e["ids"]
        label = [int(t == vocab.token_to_id("c")) for t in ids[1:]] + [0]
        out.append({"ids": ids, "label": label, "label_mask": [1] * (len(ids) - 1) + [0]})
    return out


def test_dense_classification_learns_per_position_labels(toy_vocab, tmp_path):
    pl.seed_everything(0)
    ex = _dense_examples(toy_vocab, 200)
    dm = ExamplesDataModule(ex, toy_vocab, batch_size=16)
    tasks = [{"name": "next_is_c", "kind": "dense_classification", "n_outputs": 2}]
    ft = _ft(toy_vocab, tasks=tasks, lr=3e-3, warmup_steps=5)
    trainer = _trainer(150)
    trainer.fit(ft, dm)
    m = trainer.callback_metrics
    # 'c' follows 'b' only: the majority class ("not c") is right ~80% of the time.
    assert m["val/next_is_c/acc"] > 0.97 and m["val/next_is_c/mcc"] > 0.9
    batch = dm.collate(dm.splits["val"][:4])
    rows, out = ft.eval()(batch)["next_is_c"]
    assert out.shape == (*batch["ids"].shape, 2)
    trainer.save_checkpoint(tmp_path / "dense.ckpt")
    again = load_module(tmp_path / "dense.ckpt")
    torch.testing.assert_close(again(batch)["next_is_c"][1], out)


def test_dense_loss_weights_positions_by_label_mask(toy_vocab):
    tasks = [{"name": "t", "kind": "dense_regression", "n_outputs": 1}]
    ft = _ft(toy_vocab, tasks=tasks).eval()
    b = {"ids": torch.randint(6, 10, (2, 5))}
    b["label"] = torch.randn(2, 5, 1)
    b["label_mask"] = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]).bool()
    out = ft(b)["t"][1]
    keep = b["label_mask"]
    expected = F.mse_loss(out[keep], b["label"][keep])
    torch.testing.assert_close(ft._losses(b, None), expected)
    b2 = {**b, "label": b["label"].clone()}
    b2["label"][~keep] += 100.0  # labels at masked positions do not count
    torch.testing.assert_close(ft._losses(b2, None), expected)


class PatchHead(nn.Module):
    """A domain-style head: each token state -> `per_token` outputs of its own (e.g. the
    voxels of a patch), flattened to (B, L * per_token, n_outputs)."""

    def __init__(self, d_model: int, n_outputs: int, per_token: int = 2):
        super().__init__()
        self.n, self.per = n_outputs, per_token
        self.proj = nn.Linear(d_model, per_token * n_outputs)

    def forward(self, h: torch.Tensor, batch: dict) -> torch.Tensor:
        assert "x" in batch  # the head sees the batch (e.g. the raw crop)
        return self.proj(h).view(h.shape[0], -1, self.n)


def test_dense_binary_with_a_domain_head_on_continuous_tokens(tmp_path):
    """The EM case: continuous inputs, a head module from the domain, per-element BCE
    weights, the backbone at its own lr."""
    tasks = [
        {
            "name": "aff",
            "kind": "dense_binary",
            "n_outputs": 3,
            "head": {"class_path": "tests.test_finetune.PatchHead", "init_args": {"per_token": 2}},
        }
    ]
    ft = FinetuneModule(
        tasks=tasks, backbone_config={**BACKBONE, "d_input": 5}, backbone_lr=1e-4
    ).eval()
    b = {"x": torch.randn(2, 4, 5), "label": (torch.rand(2, 8, 3) > 0.5).float()}
    b["label_mask"] = torch.rand(2, 8, 3)
    out = ft(b)["aff"][1]
    assert out.shape == (2, 8, 3)
    w = b["label_mask"]
    raw = F.binary_cross_entropy_with_logits(out, b["label"], reduction="none")
    torch.testing.assert_close(ft._losses(b, None), (raw * w).sum() / w.sum())
    head, bb = _group_lrs(ft)
    assert head == {1e-3} and set(bb) == {1e-4}


class VoxelHead(PatchHead):
    """Outputs channels first, (B, n_outputs, L * per_token), like a Conv3d decoder."""

    def forward(self, h: torch.Tensor, batch: dict) -> torch.Tensor:
        return super().forward(h, batch).transpose(1, 2)


def test_dense_outputs_of_any_shape_with_weights_of_that_shape():
    head = {"class_path": "tests.test_finetune.VoxelHead", "init_args": {"per_token": 3}}
    tasks = [{"name": "aff", "kind": "dense_binary", "n_outputs": 2, "head": head}]
    ft = FinetuneModule(tasks=tasks, backbone_config={**BACKBONE, "d_input": 4}).eval()
    b = {"x": torch.randn(3, 5, 4), "label": (torch.rand(3, 2, 15) > 0.5).float()}
    out = ft(b)["aff"][1]
    assert out.shape == (3, 2, 15)
    raw = F.binary_cross_entropy_with_logits(out, b["label"], reduction="none")
    torch.testing.assert_close(ft._losses(b, None), raw.mean())  # no mask: all count
    b["label_mask"] = (torch.rand(3, 2, 15) > 0.3).float()
    w = b["label_mask"]
    torch.testing.assert_close(ft._losses(b, None), (raw * w).sum() / w.sum())
    ft._losses(b, "val")
    keep = w > 0
    acc = ((out[keep] > 0).float() == b["label"][keep]).float().mean()
    assert ft.task_metrics("val")["val/aff/acc"] == pytest.approx(float(acc))


def test_bad_options_are_refused(toy_vocab):
    with pytest.raises(ValueError, match="kind"):
        _ft(toy_vocab, tasks=[{"name": "x", "kind": "dense"}])
    with pytest.raises(ValueError, match="attention"):
        _ft(toy_vocab, attention="sideways")
    with pytest.raises(ValueError, match="unknown keys"):
        FinetuneModule(tasks=[{"name": "x", "kind": "regression"}], backbone_config={"d_mdl": 4})
    ft = _ft(toy_vocab, attention="prefix")
    with pytest.raises(ValueError, match="prefix_len"):
        ft(_batch(toy_vocab))
