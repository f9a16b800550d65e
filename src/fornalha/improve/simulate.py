"""Simulated users for the improvement loop: what `examples/feedback_loop.py` and the tests share.

* `uniform_char_champion(run, text)`: a run folder holding an *untrained* tiny character-level GPT
  whose answers are near-uniform strings of ordinary characters, always as long as `max_tokens`
  allows — a champion with no built-in taste, so a rule about answers starts near its chance rate.
* `val_dataset(folder, docs)`: a prepared dataset with only a `val` split (the gate's bpb check).
* `registry_with_champion(folder, run)`: a new registry whose champion (v1) is `run`; its store URL.
* `post_rating(url, key, completion_id, rating)`: a rating through `POST /v1/feedback`, as a user's
  page sends it, retried while the store has not yet written the completion.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

RATING_RETRIES = 50  # x 0.1 s: the store writes a completion on its own thread, a moment after answering


def uniform_char_champion(run: Path, text: str, seed: int = 0, block_size: int = 128) -> Path:
    """Write RUN (tokenizer/ and checkpoints/best/): an untrained 2-layer, width-32 char GPT.

    Every token embedding carries a constant in dimension 0, so the last hidden state always points
    that way; the untied head reads +1 there for ordinary characters and -1 for special tokens and
    `<|unk|>`: those never win, every answer runs to max_tokens (no length bias in summed
    log-probabilities), and which characters it holds is close to a fair die.
    """
    import torch

    from fornalha.checkpoint import model_state_for_saving, save_checkpoint
    from fornalha.model import GPT, ModelConfig
    from fornalha.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train([text])
    tok.save(run / "tokenizer")
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2,
                      n_embd=32, tie_embeddings=False)  # fmt: skip
    model = GPT(cfg)
    with torch.no_grad():
        model.wte.weight[:, 0] = 5.0
        model.lm_head.weight[:, 0] = 1.0
        model.lm_head.weight[: tok.unk_id + 1, 0] = -1.0
    meta = {"model_config": cfg.to_dict(), "step": 0, "metrics": {}, "lineage": {"parent": None}}
    save_checkpoint(run / "checkpoints" / "best", model_state_for_saving(model), meta)
    return run


def val_dataset(folder: Path, docs: Sequence[str]) -> Path:
    """A prepared dataset (fornalha-dataset manifest) whose only split, `val`, holds `docs`."""
    import zstandard

    (folder / "val").mkdir(parents=True)
    lines = [json.dumps({"text": t, "source": "simulated", "id": str(i)}) for i, t in enumerate(docs)]
    (folder / "val" / "part-00000.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("\n".join(lines).encode())
    )
    split = {"shards": [{"file": "val/part-00000.jsonl.zst"}], "documents": len(lines)}
    (folder / "manifest.json").write_text(
        json.dumps({"format": "fornalha-dataset", "version": 1, "splits": {"val": split}})
    )
    return folder


def registry_with_champion(folder: Path, run: Path, created_by: str | None = None) -> str:
    """Create the registry FOLDER with `run` registered as v1, the champion; return the SQLite URL of
    its store (`sqlite:///FOLDER/fornalha.db`, the one `serve --registry FOLDER` uses by default)."""
    from fornalha.improve.registry import Registry, default_db_url

    reg = Registry.open(folder, create=True)
    try:
        reg.register(run, created_by=created_by)
    finally:
        reg.close()
    return default_db_url(folder)


def post_rating(url: str, key: str, completion_id: str, rating: int, user: str | None = None) -> None:
    """POST /v1/feedback; retried while the completion is not in the store yet. Raises on refusal."""
    import httpx

    body = {"completion_id": completion_id, "rating": rating, **({"user": user} if user else {})}
    for _ in range(RATING_RETRIES):
        res = httpx.post(url + "/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"})
        if res.status_code == 200:
            return
        if res.status_code != 400 or "unknown" not in res.text:
            break
        time.sleep(0.1)
    raise RuntimeError(f"feedback refused ({res.status_code}): {res.text}")
