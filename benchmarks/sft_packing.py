"""Packing for chat SFT: several conversations per row (document-masked) vs one padded conversation per row.

The rows come from the real Portuguese Q&A set (../shared/data/sft/aira1_qa_pt.jsonl) encoded with a
BPE tokenizer trained on it, the model has the `assistant` preset's shape (4 layers, width 128,
256-token context). For each way of building rows, the same conversations are made into rows and a
few AdamW training steps are timed:

    padded (baseline)   one conversation per row, the rest padding
    packed + mask       conversations back to back, attention kept within each (doc_ids)
    packed, no mask     the same rows without doc_ids: attention leaks across conversations
                        (what packing costs without document masking; wrong, shown for its speed)

Figures: the share of a row that is real tokens, answer (trained) tokens per second, and the time
one epoch of the conversations takes. Ratios are against the padded baseline, measured in the same
run. The last stdout line is JSON.

    flock /tmp/fornalha-bench.lock python benchmarks/sft_packing.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sft" / "aira1_qa_pt.jsonl"


def main() -> None:
    from fornalha.finetune.chat_data import read_chat_data, render_with_mask
    from fornalha.finetune.sft import chat_loss, pack_rows
    from fornalha.model import GPT, ModelConfig
    from fornalha.tokenizer.bpe import train_bpe

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=512)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()

    examples = read_chat_data([DATA]).examples[: args.conversations]
    texts = [m["content"] for ex in examples for m in ex.messages]
    tokenizer = train_bpe(texts, 2048)
    seqs = []
    for ex in examples:
        ids, mask = render_with_mask(tokenizer, ex.messages)
        seqs.append((ids[: args.seq_len + 1], mask[: args.seq_len + 1]))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, block_size=args.seq_len, n_layer=4, n_head=4, n_embd=128,
                      qk_norm=True, tie_embeddings=True)  # fmt: skip
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    results = {}
    for name, pack, masked in (
        ("padded", False, True),
        ("packed_masked", True, True),
        ("packed_no_mask", True, False),
    ):
        x, y, doc = pack_rows(seqs, args.seq_len, 2, pack)
        real = float((doc >= 0).float().mean())
        rows = min(len(x), args.steps * args.batch_size)
        batches = [(x[i : i + args.batch_size], y[i : i + args.batch_size], doc[i : i + args.batch_size])
                   for i in range(0, rows, args.batch_size)]  # fmt: skip
        step = (lambda b: chat_loss(model, b)) if masked else (lambda b: model(b[0], b[1])[1])
        step(batches[0]).backward()  # warm-up
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        answer_tokens = 0
        for b in batches:
            step(b).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            answer_tokens += int((b[1] >= 0).sum())
        dt = time.perf_counter() - t0
        per_row = dt / sum(len(b[0]) for b in batches)
        results[name] = {"rows_per_epoch": len(x), "real_token_share": round(real, 4),
                         "answer_tokens_per_s": round(answer_tokens / dt, 1),
                         "epoch_s": round(per_row * len(x), 2)}  # fmt: skip
        print(f"{name:>15}: {len(x):5d} rows/epoch, {real:.1%} real tokens, "
              f"{answer_tokens / dt:8.1f} answer tokens/s, epoch {per_row * len(x):7.1f} s")  # fmt: skip
    base = results["padded"]
    summary = {
        "benchmark": "sft_packing",
        "conversations": len(seqs),
        "baseline": "padded",
        **{f"{k}_{m}": v[m] for k, v in results.items() for m in v},
        "packed_masked_speedup_answer_tokens_per_s": round(
            results["packed_masked"]["answer_tokens_per_s"] / base["answer_tokens_per_s"], 3
        ),
        "packed_masked_epoch_time_ratio": round(results["packed_masked"]["epoch_s"] / base["epoch_s"], 3),
        "mask_cost_vs_no_mask": round(
            results["packed_no_mask"]["answer_tokens_per_s"]
            / results["packed_masked"]["answer_tokens_per_s"],
            3,
        ),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
