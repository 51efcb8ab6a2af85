"""DNA domain: Omni-DNA-style pretraining and multitask finetuning with task tokens."""
