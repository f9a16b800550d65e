"""Fine-tuning: chat SFT, DPO, LoRA."""
