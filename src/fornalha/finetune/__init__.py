"""Fine-tuning a trained model: chat SFT (`sft.py`, data in `chat_data.py`), DPO (`dpo.py`, pairs in
`preference_data.py`) and LoRA adapters for either (`lora.py`).

Fine-tuning is a `fornalha.train.task.Task` on THE training loop: it brings its data, its loss and
its held-out evaluation, never a second trainer.
"""
