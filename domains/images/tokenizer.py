"""FlexTok-style image tokenizer (Bachmann et al. 2025) and its 2D-grid FSQ comparison.

layout "1d" (FlexTok): patches plus K register tokens go through a ViT encoder under the
register mask (patches bidirectional, registers causal among themselves, seeing every
patch); the K register outputs are FSQ-quantised into K ids. Nested dropout keeps the first
k tokens (k uniform or a power of two) and masks the rest, so every prefix decodes:
coarse (k = 1) to fine (k = K).

layout "grid" (the comparison): one token per patch in raster order; the ViT encoder is
raster-causal (token i sees patches 0..i), so a prefix of k ids describes exactly the first
k patches, the top rows; the same FSQ, decoder and nested dropout.

Decoders (`decoder`):
- "mse": learned per-patch queries and the k kept tokens through a bidirectional
  transformer, a linear map to pixels, trained with MSE (FlexTok's perceptual-free baseline).
- "flow": a rectified-flow decoder (Liu et al. 2023, as FlexTok's): the same transformer
  sees a noisy image x_t = t x1 + (1 - t) x0, t and the tokens; it is trained on the
  velocity x1 - x0 and decoding integrates `flow_steps` Euler steps from Gaussian noise.
  `flow_predict` "v" outputs the velocity; "x" outputs the clean image x1 and the velocity
  is (x1_hat - x_t) / (1 - t) (Li & He 2025, JiT), so the last Euler step lands on a clean
  prediction and the MSE decoder it starts from already predicts the right quantity.

Everything reusable (patch embedding with registers, the mask, nested dropout, FSQ,
attention blocks) comes from the core: seqmodels.blocks and seqmodels.quantizers.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from seqmodels.blocks import NestedDropout, PatchEmbed, SelfAttentionStack
from seqmodels.quantizers import FSQ
from seqmodels.tokenizer import Tokenizer

LAYOUTS = ("1d", "grid")
DECODERS = ("mse", "flow")
FLOW_PREDICT = ("v", "x")
MIN_1MT = 0.05  # x prediction: 1 - t clamped below in the training velocity (as JiT)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C * p * p), patches in raster order."""
    return F.unfold(x, p, stride=p).transpose(1, 2)


def unpatchify(patches: torch.Tensor, p: int, size: tuple[int, int]) -> torch.Tensor:
    return F.fold(patches.transpose(1, 2), size, p, stride=p)


def time_features(t: torch.Tensor, d: int) -> torch.Tensor:
    """Sinusoidal features of flow times t (B,) in [0, 1] (as diffusion models embed time)."""
    half = d // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
    angles = 1000.0 * t[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ImageTokenizer(Tokenizer):
    """See the module docstring. `n_tokens` is K (for "grid" it must equal the number of
    patches, (image_size / patch_size)^2)."""

    def __init__(
        self,
        image_size: int = 28,
        channels: int = 1,
        patch_size: int = 7,
        n_tokens: int = 16,
        layout: str = "1d",
        levels: tuple[int, ...] = (8, 5, 5, 5),
        d_model: int = 128,
        n_heads: int = 4,
        encoder_layers: int = 3,
        decoder_layers: int = 3,
        nested_dropout: str = "pow2",
        min_keep: int = 1,
        decoder: str = "mse",
        flow_steps: int = 8,
        flow_predict: str = "v",
        init_from: str | None = None,
        freeze_encoder: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, not {decoder!r}")
        if flow_predict not in FLOW_PREDICT:
            raise ValueError(f"flow_predict must be one of {FLOW_PREDICT}, not {flow_predict!r}")
        n_reg = n_tokens if layout == "1d" else 0
        self.embed = PatchEmbed(image_size, patch_size, channels, d_model, n_reg)
        n_patches = self.embed.n_patches
        if layout == "grid" and n_tokens != n_patches:
            raise ValueError(
                f"a grid tokenizer has one token per patch: n_tokens must be {n_patches}"
            )
        self.n_tokens, self.n_patches, self.patch = n_tokens, n_patches, patch_size
        self.size = (image_size, image_size)
        self.layout, self.decoder_kind, self.flow_steps = layout, decoder, flow_steps
        self.flow_predict = flow_predict
        # grid: raster-causal, so a prefix of k ids describes exactly the first k patches.
        # (A bidirectional grid encoder trained with nested dropout learned to put global
        # content into its first ids: a 1D tokenizer in disguise, not a 2D grid.)
        mask = self.embed.mask if layout == "1d" else "causal"
        self.encoder_mask = mask
        self.encoder = SelfAttentionStack(
            d_model, n_heads, encoder_layers, n_patches + n_reg, rope=False
        )
        self.to_code = nn.Linear(d_model, len(levels))
        self.z_norm = nn.BatchNorm1d(n_tokens * len(levels), affine=False)
        self.quantizer = FSQ(levels)  # no projection inside: the pre-quantisation z is ours
        self.from_code = nn.Linear(len(levels), d_model)
        self.codebook_size = self.quantizer.codebook_size
        self.nested = NestedDropout(d_model, nested_dropout, min_keep)
        self.token_pos = nn.Parameter(torch.randn(n_tokens, d_model) * 0.02)
        self.query_pos = nn.Parameter(torch.randn(n_patches, d_model) * 0.02)
        d_patch = channels * patch_size * patch_size
        if decoder == "flow":
            self.noisy_in = nn.Linear(d_patch, d_model)
            self.time_mlp = nn.Sequential(
                nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model)
            )
        self.decoder = SelfAttentionStack(
            d_model, n_heads, decoder_layers, n_patches + n_tokens, rope=False
        )
        self.norm_out = nn.RMSNorm(d_model)
        self.to_pixels = nn.Linear(d_model, d_patch)
        # Unit-scale positions, registers and queries: at the core's 0.02 the decoder's
        # queries are nearly alike and training sat on the mean image for hundreds of
        # steps (digits, d_model 32: MSE 0.073 after 200 steps; 0.020 at unit scale).
        for p in (self.embed.pos, self.embed.registers, self.token_pos, self.query_pos):
            nn.init.normal_(p, std=1.0)
        if init_from:
            self._load_matching(init_from)
        if freeze_encoder:
            for m in self._encoder_modules():
                m.requires_grad_(False)
        # A frozen encoder gives an image the same codes every epoch: they are remembered by
        # the image's bytes (exact: same input, same eval-mode encoder), which takes the
        # encoder's forward (about a fifth of a flow decoder's training step) off later epochs.
        self._frozen_codes: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}

    def _encoder_modules(self) -> list[nn.Module]:
        return [self.embed, self.encoder, self.to_code, self.z_norm, self.quantizer, self.from_code]

    def _load_matching(self, path: str) -> None:
        """Copy every weight of another image tokenizer whose name and shape match (a
        flow decoder started from an MSE tokenizer keeps its encoder, so its ids)."""
        from seqmodels.checkpoint import load_checkpoint

        state = load_checkpoint(path)["state_dict"]
        own = self.state_dict()
        matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not any(k.startswith("encoder.") for k in matched):
            raise ValueError(f"{path}: no encoder weights fit this tokenizer")
        self.load_state_dict(matched, strict=False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.freeze_encoder:  # frozen batch-norm statistics: the ids stay fixed
            for m in self._encoder_modules():
                m.eval()
        return self

    @staticmethod
    def hparams_for_load(ckpt: dict) -> dict:
        """Rebuild from the checkpoint's own weights, not from `init_from`."""
        return {**ckpt["hyper_parameters"], "init_from": None}

    # -- encoder ------------------------------------------------------------------------
    def _features(self, images: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(images), self.encoder_mask)
        return h[:, self.n_patches :] if self.layout == "1d" else h

    def _codes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (B, K, levels), ids (B, K)). z is batch-normalised (per token and channel)
        before FSQ: at initialisation the encoder's outputs differ between images by much
        less than one FSQ bin, so every image got the same code and training never left it
        (seen on digits: one code in use); standardised z spreads over the levels from step 0."""
        z = self.to_code(self._features(images))
        z = self.z_norm(z.flatten(1)).view_as(z)  # per token and channel, over images
        codes, ids, _ = self.quantizer(z)
        return codes, ids

    def quantize(self, images: torch.Tensor):
        """(tokens (B, K, d), ids (B, K)): the codes mapped to the model width."""
        codes, ids = self._codes(images)
        return self.from_code(codes), ids

    @torch.no_grad()
    def _remembered_codes(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """_codes of a frozen encoder, from memory when every image was seen before."""
        keys = [
            hashlib.blake2b(img.cpu().numpy().tobytes(), digest_size=16).digest() for img in images
        ]
        if all(k in self._frozen_codes for k in keys):
            codes, ids = zip(*(self._frozen_codes[k] for k in keys))
            return torch.stack(codes).to(images.device), torch.stack(ids).to(images.device)
        codes, ids = self._codes(images)
        for k, c, i in zip(keys, codes.cpu(), ids.cpu()):
            self._frozen_codes[k] = (c, i)
        return codes, ids

    @torch.no_grad()
    def encode(self, batch: dict) -> torch.Tensor:
        """(B, K) ids in [0, codebook_size); any prefix is a coarser encoding."""
        return self.quantize(self._images(batch))[1]

    # -- decoder ------------------------------------------------------------------------
    def _decode_patches(self, tokens, k, noisy=None, t=None) -> torch.Tensor:
        tokens, _ = self.nested(tokens, k)
        queries = self.query_pos[None].expand(tokens.shape[0], -1, -1)
        if noisy is not None:
            queries = queries + self.noisy_in(patchify(noisy, self.patch))
            tf = self.time_mlp(time_features(t, queries.shape[-1]))
            queries = queries + tf[:, None]
        h = self.decoder(torch.cat([queries, tokens + self.token_pos], dim=1))
        return self.to_pixels(self.norm_out(h[:, : self.n_patches]))

    def _velocity(self, tokens, k, x_t, t, min_1mt: float = 0.0) -> torch.Tensor:
        """The flow decoder's velocity at (x_t, t): its output, or from its clean-image
        prediction ("x"); 1 - t is clamped below at min_1mt."""
        out = unpatchify(self._decode_patches(tokens, k, x_t, t), self.patch, self.size)
        if self.flow_predict == "v":
            return out
        return (out - x_t) / (1 - t).clamp(min=min_1mt)[:, None, None, None]

    def decode_tokens(
        self, tokens: torch.Tensor, k, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images from quantised tokens (B, K, d) of which the first k are kept."""
        B = tokens.shape[0]
        if self.decoder_kind == "mse":
            return unpatchify(self._decode_patches(tokens, k), self.patch, self.size)
        c = self.hparams.channels
        x = torch.randn(B, c, *self.size, generator=generator).to(tokens)
        dt = 1.0 / self.flow_steps
        for i in range(self.flow_steps):  # Euler steps from noise (t = 0) to the image (t = 1)
            t = torch.full((B,), i * dt, device=tokens.device)
            x = x + dt * self._velocity(tokens, k, x, t)  # t <= 1 - dt: no division by 0
        return x

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] from the first k <= K ids of each image (B, k)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.token_pos.device)
        B, k = ids.shape
        if not 1 <= k <= self.n_tokens:
            raise ValueError(f"decode takes 1..{self.n_tokens} ids per image, got {k}")
        full = torch.zeros(B, self.n_tokens, dtype=torch.long, device=ids.device)
        full[:, :k] = ids
        tokens = self.from_code(self.quantizer.indices_to_codes(full))  # >= k masked anyway
        if generator is None:
            generator = torch.Generator().manual_seed(self.hparams.seed)
        return self.decode_tokens(tokens, k, generator).clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, k: int) -> torch.Tensor:
        return self.decode(self.encode({"image": images})[:, :k])

    # -- training -----------------------------------------------------------------------
    @staticmethod
    def _images(batch: dict) -> torch.Tensor:
        if "image" not in batch:
            raise ValueError("an image tokenizer needs batches with 'image' (B, C, H, W)")
        return batch["image"]

    def loss(self, batch: dict, generator: torch.Generator | None = None):
        images = self._images(batch)
        if self.hparams.freeze_encoder:
            codes, ids = self._remembered_codes(images)
            tokens = self.from_code(codes)
        else:
            tokens, ids = self.quantize(images)
        B = images.shape[0]
        k = self.nested.sample_k(B, self.n_tokens, generator).to(images.device)
        if self.decoder_kind == "mse":
            recon = unpatchify(self._decode_patches(tokens, k), self.patch, self.size)
            loss = F.mse_loss(recon, images)
            logs = {"mse": loss.detach()}
        else:
            noise = torch.randn(images.shape, generator=generator).to(images)
            # Logit-normal times (Esser et al. 2024): more weight on the middle of the path.
            t = torch.sigmoid(torch.randn(B, generator=generator)).to(images)
            tt = t[:, None, None, None]
            x_t = tt * images + (1 - tt) * noise
            v = self._velocity(tokens, k, x_t, t, MIN_1MT)
            loss = F.mse_loss(v, images - noise)
            logs = {"flow_mse": loss.detach()}
        return loss, logs, ids
