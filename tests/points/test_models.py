"""The tokenizer (level masks, encode/decode, training lowers Chamfer at every level) and the
cross-scale AR (block-causal levels, guidance 0 = unconditional, generation shapes)."""

import pytest
import pytorch_lightning as pl
import torch

from domains.points.ar import CrossScaleAR, load_ar
from domains.points.data import PointCloudDataModule
from domains.points.tokenizer import PointTokenizer, block_causal, parent_tree

SMALL = {
    "scales": [1, 4, 16],
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "train_points": 64,
    "n_freqs": 4,
    "quantizer": {"kind": "fsq", "levels": [5, 5, 5]},
}


def test_block_causal_levels_and_parent_tree():
    a = block_causal([1, 2], prefix=1).allowed
    expected = torch.tensor(
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool
    )
    assert torch.equal(a, expected)
    assert parent_tree([1, 4, 16])[1] == [i // 4 for i in range(16)]


def _fit(module, dm, steps, root):
    trainer = pl.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
    )
    trainer.fit(module, dm)
    return trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("points")
    pl.seed_everything(0)
    dm = PointCloudDataModule("synthetic", n_points=128, n_synthetic=8, batch_size=8)
    dm.setup("fit")
    tok = PointTokenizer(**SMALL, max_steps=60, warmup_steps=5, lr=3e-3)
    x = torch.from_numpy(dm.sets["val"].points[:8])
    before = _chamfers(tok, x)
    trainer = _fit(tok, dm, 60, root)
    path = root / "tok.ckpt"
    trainer.save_checkpoint(path)
    return tok.eval(), str(path), dm, x, before


def _chamfers(tok, x):
    from domains.points.metrics import chamfer_distance

    ids = tok.encode(x)
    return [chamfer_distance(tok.decode(ids, 128, k), x).mean().item() for k in (1, 2, 3)]


def test_tokenizer_encode_decode_and_training_lowers_chamfer(trained):
    tok, _, _, x, before = trained
    ids = tok.encode(x)
    assert ids.shape == (8, 21) and ids.max() < 125
    assert tok.decode(ids, 300).shape == (8, 300, 3)
    assert tok.decode(ids[:, :5], 50).shape == (8, 50, 3)  # the first two levels only
    # oversampled: N points kept of 4N decoded, as evenly spread as the decoder allows
    even = tok.decode(ids, 300, oversample=4)
    assert even.shape == (8, 300, 3)
    exact = "donot_use_mm_for_euclid_dist"  # exact distances: a subset of them
    assert torch.cdist(even, tok.decode(ids, 1200), compute_mode=exact).amin(-1).max() == 0
    after = _chamfers(tok, x)
    assert all(a < b for a, b in zip(after, before)), (before, after)
    # tokens inside a level carry no position: permuting the input points changes nothing
    perm = x[:, torch.randperm(x.shape[1])]
    assert torch.equal(tok.encode(perm), ids)


def test_ar_guidance_and_generation(trained, tmp_path):
    _, path, dm, _, _ = trained
    pl.seed_everything(0)
    ar = CrossScaleAR(
        path,
        class_names=list(dm.sets["train"].classes),
        d_model=32,
        n_layers=1,
        max_steps=20,
        warmup_steps=2,
    )
    trainer = _fit(ar, dm, 20, tmp_path)
    ar.eval()
    labels = torch.tensor([0, 1, 2])
    ids = ar.generate(labels, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (3, 21) and ids.max() < ar.tok.codebook_size
    # level s sees only levels <= s: logits of level 0-1 ignore level 2's inputs
    inputs = ar.tok.quantizer.next_scale_inputs(ids)
    changed = inputs.clone()
    changed[:, 5:] += 1.0
    a, b = ar.logits(inputs, labels), ar.logits(changed, labels)
    assert torch.allclose(a[:, :5], b[:, :5]) and not torch.allclose(a[:, 5:], b[:, 5:])
    # guidance 0 is the unconditional model: the same ids as sampling with the null class
    null = torch.full_like(labels, ar.null_class)
    g0 = ar.generate(labels, guidance=0.0, generator=torch.Generator().manual_seed(1))
    un = ar.generate(null, guidance=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(g0, un)
    saved = tmp_path / "ar.ckpt"
    trainer.save_checkpoint(saved)
    again = load_ar(str(saved))
    torch.testing.assert_close(again.logits(inputs, labels), a)


def test_evaluation_pipeline_reports_model_and_references(trained):
    from domains.points.evaluate import generation_metrics, reconstruction_by_level

    tok, _, dm, x, _ = trained
    train = dm.sets["train"].points
    rec = tok.decode(tok.encode(x), 128).numpy()
    m = generation_metrics(rec, x.numpy(), train, tokenizer=tok)
    assert set(m) == {"model", "train_copy", "single_shape", "tokenized_train_copy"}
    assert m["single_shape"]["COV-CD"] == pytest.approx(1 / len(x))
    assert all(0.0 <= v["1-NNA-CD"] <= 1.0 for v in m.values())
    alone = generation_metrics(rec, x.numpy(), train, tokenizer=tok, references=False)
    assert alone == {"model": m["model"]}  # the same figures, without the references
    per_level = reconstruction_by_level(tok, dm.sets["val"])
    assert len(per_level) == 3 and all(v > 0 for v in per_level)


def test_a_tiled_subset_encodes_as_the_subset_itself(trained):
    """PointTokenSource's views rely on it: repeating every point r times leaves the
    encoder's features unchanged (per-point map, attention pooling)."""
    tok, _, _, x, _ = trained
    subset = x[:, :32]
    a = tok.features(subset)
    b = tok.features(subset.repeat(1, 4, 1))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)
    assert torch.equal(tok.encode(subset), tok.encode(subset.repeat(1, 4, 1)))
