"""Sequence mixers: each maps embeddings (B, L, d_model) to states of the same shape."""

from .attention import AttentionSpec
from .transformer import Transformer

BACKBONES: dict[str, type] = {"transformer": Transformer}
BACKBONES["mamba"] = __import__(f"{__name__}.mamba", fromlist=["MambaBackbone"]).MambaBackbone


def compile_backbones(module, **compile_kwargs) -> int:
    """`torch.compile` every backbone inside `module`, in place (state-dict keys do not
    change); returns how many. Used by `fit --compile` and `generate --compile`."""
    kinds, n = tuple(BACKBONES.values()), 0
    for m in module.modules():
        if isinstance(m, kinds) and not getattr(m, "_compiled_call_impl", None):
            m.compile(**compile_kwargs)
            n += 1
    return n


__all__ = ["BACKBONES", "AttentionSpec", "Transformer", "compile_backbones"]
