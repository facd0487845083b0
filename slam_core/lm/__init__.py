"""Speech LM: vocabulary, TWIST init, packed data, budgeted pre-training, checkpoints, DPO."""
