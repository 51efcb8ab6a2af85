"""EM volumes as token sequences (TokenUnify): patch tokens, Mamba pretraining with mixed
objectives, and neuron segmentation from affinities."""
