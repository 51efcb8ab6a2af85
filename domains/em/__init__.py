"""EM volumes as token sequences (TokenUnify): patch tokens, Mamba pretraining with mixed
objectives, and neuron segmentation from affinities."""

from seqmodels.backbones import BACKBONES
from seqmodels.backbones.mamba import MambaBackbone

# Until the core's registry lists it: SeqLM looks backbones up by name.
BACKBONES.setdefault("mamba", MambaBackbone)
