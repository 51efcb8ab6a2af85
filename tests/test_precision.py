"""`--trainer.precision auto`: the flag, the decision rule, and a fit that measures both
precisions on its first batch without changing what it then trains."""

import torch

from seqmodels import cli, precision
from seqmodels.precision import choose, take_auto_precision
from tests.test_cli import TINY


def test_auto_flag_is_taken_out_of_the_command_line():
    argv, auto = take_auto_precision(["fit", "--trainer.precision", "auto", "-c", "x.yaml"])
    assert auto and argv == ["fit", "--trainer.precision", "32-true", "-c", "x.yaml"]
    argv, auto = take_auto_precision(["fit", "--trainer.precision=auto"])
    assert auto and argv == ["fit", "--trainer.precision=32-true"]
    argv, auto = take_auto_precision(["fit", "--trainer.precision", "bf16-mixed"])
    assert not auto and argv == ["fit", "--trainer.precision", "bf16-mixed"]


def test_bf16_only_when_faster_by_the_margin():
    assert choose(fp32_s=1.0, bf16_s=0.5, margin=1.05) == "bf16-mixed"
    assert choose(fp32_s=1.0, bf16_s=1.0, margin=1.05) == "32-true"  # a tie: fp32
    assert choose(fp32_s=1.0, bf16_s=0.97, margin=1.05) == "32-true"  # within the margin
    assert choose(fp32_s=1.0, bf16_s=1.4, margin=1.05) == "32-true"


def _fit(root, extra, monkeypatch=None, forced=None) -> dict:
    if forced is not None:
        monkeypatch.setattr(precision, "choose", lambda *a, **k: forced)
    argv = ["fit", *TINY, "--trainer.max_steps", "4", "--model.init_args.max_steps", "4",
            "--model.init_args.dropout", "0.2", "--trainer.default_root_dir", str(root)]  # fmt: skip
    assert cli.main([*argv, *extra]) == 0
    return torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_auto_measures_then_trains_exactly_as_the_chosen_precision(tmp_path, monkeypatch):
    """With the choice forced to fp32, the trial steps (forward, backward, dropout draws,
    logging) leave no trace: the weights equal those of a plain fp32 fit. Forced to bf16,
    the weights differ (the plugin really switched) and stay finite."""
    plain = _fit(tmp_path / "plain", [])
    auto32 = _fit(tmp_path / "a32", ["--trainer.precision", "auto"], monkeypatch, "32-true")
    for k in plain:
        assert torch.equal(plain[k], auto32[k]), k
    auto16 = _fit(tmp_path / "a16", ["--trainer.precision", "auto"], monkeypatch, "bf16-mixed")
    assert any(not torch.equal(plain[k], auto16[k]) for k in plain)
    assert all(torch.isfinite(v).all() for v in auto16.values() if v.is_floating_point())
    log = next((tmp_path / "a16").rglob("metrics.csv")).read_text()
    assert "precision/bf16" in log.splitlines()[0]


def test_auto_on_the_real_timings_picks_one_and_logs_both(tmp_path):
    _fit(tmp_path, ["--trainer.precision", "auto"])
    header, *rows = next(tmp_path.rglob("metrics.csv")).read_text().splitlines()
    cols = header.split(",")
    i, j = cols.index("precision/fp32_step_s"), cols.index("precision/bf16_step_s")
    row = next(r.split(",") for r in rows if r.split(",")[i])
    assert float(row[i]) > 0 and float(row[j]) > 0


def test_cpu_bf16_attention_runs_in_fp32_under_autocast():
    """The bf16 attention of a training step is computed in fp32 from the bf16 inputs
    (CPU autocast would otherwise cast the fp32 copies back to bf16: the slow kernel),
    returns bf16, and its gradients are the fp32 attention's."""
    import torch.nn.functional as F

    from seqmodels.backbones.attention import sdpa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8, generator=g).bfloat16().requires_grad_() for _ in "qkv")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sdpa(q, k, v, is_causal=True)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, is_causal=True)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, ref.bfloat16())
    y.float().sum().backward()
    ref.sum().backward()
    for t, r in zip((q, k, v), ref_in):
        assert t.grad.dtype == torch.bfloat16
        torch.testing.assert_close(t.grad.float(), r.grad, atol=1e-2, rtol=1e-2)
    # A bool mask, and a forward-only call that stays in bf16 (decoding).
    mask = torch.rand(16, 16, generator=g) > 0.3
    mask |= torch.eye(16, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ym = sdpa(q, k, v, attn_mask=mask)
    refm = F.scaled_dot_product_attention(*(t.float() for t in (q, k, v)), attn_mask=mask)
    assert torch.equal(ym, refm.bfloat16())
    with torch.no_grad():
        assert sdpa(q, k, v, is_causal=True).dtype == torch.bfloat16


def test_bf16_fit_clips_gradients_with_the_fused_optimizer(tmp_path):
    """bf16-mixed has no grad scaler, so clipping with the fused AdamW is plain clipping:
    Lightning's mixed-precision plugin refused it (a fit with `gradient_clip_val` stopped
    with an error). The fit runs, and the clip scales the gradients to the norm asked."""
    import pytorch_lightning as pl

    from seqmodels.training import SeqLM

    _fit(tmp_path, ["--trainer.precision", "bf16-mixed", "--trainer.gradient_clip_val", "0.5"])
    module = SeqLM(vocab_size=11, d_model=16, n_layers=1, n_heads=2, max_len=8, max_steps=10)
    module.trainer = pl.Trainer(precision="bf16-mixed", accelerator="cpu", logger=False)
    opt = module.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"]
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    module.configure_gradient_clipping(opt, 0.5, "norm")
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()]))
    assert abs(float(norm) - 0.5) < 1e-4
