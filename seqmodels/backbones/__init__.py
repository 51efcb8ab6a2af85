"""Sequence mixers: each maps embeddings (B, L, d_model) to states of the same shape."""

from .attention import AttentionSpec
from .transformer import Transformer

BACKBONES: dict[str, type] = {"transformer": Transformer}
BACKBONES["mamba"] = __import__(f"{__name__}.mamba", fromlist=["MambaBackbone"]).MambaBackbone

__all__ = ["BACKBONES", "AttentionSpec", "Transformer"]
