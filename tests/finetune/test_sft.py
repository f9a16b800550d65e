"""Chat SFT: document-masked packing computes each conversation as if alone; the loader resumes
exactly; `fornalha finetune sft` lowers the held-out answer loss on a fornalha run and on an
imported Hugging Face model, reports bad records, resumes, and refuses bad input with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fornalha.checkpoint import model_state_for_saving, save_checkpoint
from fornalha.cli import main
from fornalha.finetune.sft import ChatLoader, pack_rows
from fornalha.model import GPT, ModelConfig
from fornalha.tokenizer.char import CharTokenizer

QUESTIONS = ["what is red", "what is blue", "name a fruit", "say hello", "count to three", "what is ice"]
ANSWERS = [
    "red is a colour.",
    "blue is the sky.",
    "an apple.",
    "hello there.",
    "one two three.",
    "cold water.",
]


def qa_rows(n_paraphrases: int = 8) -> list[dict]:
    """Paraphrased questions sharing an answer per topic (like the Aira set): `answer_id` groups them."""
    rows = []
    for k, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        for p in range(n_paraphrases):
            rows.append(
                {"prompt": f"{q}{'?' * (1 + p % 3)}{' please' * (p // 3)}", "completion": a, "answer_id": k}
            )
    return rows


def make_base_run(root: Path, block_size: int = 64) -> Path:
    run = root / "base"
    text = " ".join(QUESTIONS + ANSWERS) + "?.,"
    tok = CharTokenizer.train([text])
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    model = GPT(cfg)
    save_checkpoint(run / "checkpoints" / "best", model_state_for_saving(model),
                    {"model_config": model.config.to_dict(), "step": 0})  # fmt: skip
    return run


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capsys.readouterr()
    return exit_.value.code or 0, out, err


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------


def test_packed_row_computes_each_conversation_as_if_alone():
    torch.manual_seed(0)
    model = GPT(
        ModelConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, init_std=0.3)
    )
    model.eval()
    seqs = [(list(range(7, 7 + n)), [0] * 3 + [1] * (n - 3)) for n in (9, 6, 11)]
    x, y, doc = pack_rows(seqs, seq_len=32, pad_id=2)
    assert x.shape == (1, 32) and doc[0].tolist()[:25] == [0] * 8 + [1] * 5 + [2] * 10 + [-1] * 2
    assert y[0, :8].tolist() == [-1, -1, 10, 11, 12, 13, 14, 15]  # targets only where the mask is 1
    with torch.no_grad():
        packed, _ = model(x, doc_ids=doc)
        unmasked, _ = model(x)
        start = 0
        for ids, _ in seqs:
            n = len(ids) - 1
            alone, _ = model(torch.tensor([ids[:-1]]))
            torch.testing.assert_close(packed[0, start : start + n], alone[0], atol=1e-5, rtol=1e-5)
            if start:  # without the document mask, later conversations see earlier ones
                assert (unmasked[0, start : start + n] - alone[0]).abs().max() > 1e-3
            start += n


def test_no_packing_gives_one_padded_conversation_per_row():
    seqs = [([0, 5, 6, 7], [0, 0, 1, 1]), ([0, 8, 9], [0, 1, 1])]
    x, y, doc = pack_rows(seqs, seq_len=6, pad_id=2, pack=False)
    assert x.tolist() == [[0, 5, 6, 2, 2, 2], [0, 8, 2, 2, 2, 2]]
    assert y.tolist() == [[-1, 6, 7, -1, -1, -1], [8, 9, -1, -1, -1, -1]]
    assert doc.tolist() == [[0, 0, 0, -1, -1, -1], [1, 1, -1, -1, -1, -1]]


def test_loader_is_deterministic_and_resumes_exactly():
    seqs = [([0] + [7 + i] * (3 + i % 4), [0] + [1] * (3 + i % 4)) for i in range(20)]
    a = ChatLoader(seqs, batch_size=3, seq_len=12, pad_id=2, seed=5)
    batches = [a.next_batch() for _ in range(9)]  # crosses epoch boundaries
    assert a.epoch >= 1
    b = ChatLoader(seqs, batch_size=3, seq_len=12, pad_id=2, seed=5)
    for _ in range(4):
        b.next_batch()
    state = json.loads(json.dumps(b.state_dict()))
    c = ChatLoader(seqs, batch_size=3, seq_len=12, pad_id=2, seed=5)
    c.load_state_dict(state)
    for want in batches[4:]:
        got = c.next_batch()
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    other = ChatLoader(seqs, batch_size=3, seq_len=12, pad_id=2, seed=6).next_batch()
    assert not torch.equal(other[0], batches[0][0])


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

FAST = ["--set", "train.batch_size=4", "--set", "train.eval_interval=10", "--set", "train.samples=0",
        "--set", "train.lr=0.003", "--set", "train.patience=null", "--device", "cpu"]  # fmt: skip


def test_finetune_sft_lowers_held_out_answer_loss_and_reports_bad_records(tmp_path, capsys):
    base = make_base_run(tmp_path)
    data = tmp_path / "qa.jsonl"
    lines = [json.dumps(r) for r in qa_rows()]
    lines.insert(3, "{broken")
    lines.insert(10, json.dumps({"prompt": "no answer"}))
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "chat"
    code, _, err = run_cli(
        ["finetune", "sft", "--run", str(base), "--data", str(data), "--out", str(out), "--val-fraction", "0.2",
         "--set", "train.max_steps=40", *FAST], capsys,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "sft_report.json").read_text())
    assert report["bad_records"] == 2
    assert report["bad_record_lines"][0].startswith("qa.jsonl:4:") and report["bad_record_lines"][
        1
    ].startswith("qa.jsonl:11:")
    assert (
        report["held_out_conversations"] > 0
        and report["train_conversations"] > report["held_out_conversations"]
    )
    assert report["answer_loss_after"] < report["answer_loss_before"] - 0.5, report
    assert "held-out answer loss" in err and "qa.jsonl:4" in err
    assert (out / "checkpoints" / "best").is_dir() and (out / "tokenizer").is_dir()
    assert json.loads((out / "sft.json").read_text())["base_run"] == str(base)

    # resume: the same data and split from sft.json, the training continues to the new max_steps
    code, _, err = run_cli(
        ["finetune", "sft", "--out", str(out), "--resume", "--set", "train.max_steps=50"], capsys
    )
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == 50
    assert "resumed from" in err

    # a second fresh run into the same folder needs --overwrite
    args = [
        "finetune",
        "sft",
        "--run",
        str(base),
        "--data",
        str(data),
        "--out",
        str(out),
        "--set",
        "train.max_steps=2",
        "--val-fraction",
        "0.2",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli([*args, *FAST, "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    base = make_base_run(tmp_path)
    good = tmp_path / "qa.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in qa_rows()) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "not a conversation"}\n')
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [
        (["--run", str(base), "--out", str(tmp_path / "o1")], "--data"),
        (["--run", str(base), "--data", str(bad), "--out", str(tmp_path / "o2")], "no usable conversation"),
        (["--run", str(tmp_path / "nope"), "--data", str(good), "--out", str(tmp_path / "o3")], "nope"),
        (["--run", str(base), "--data", str(good), "--out", str(foreign)], "not empty"),
        (["--run", str(base), "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o4")], "does not exist"),
        (["--run", str(base), "--data", str(good), "--out", str(tmp_path / "o5"), "--set", "train.seq_len=999"],
         "seq_len"),
        (["--out", str(tmp_path / "o6"), "--resume"], "sft.json"),
    ]  # fmt: skip
    for args, needle in cases:
        code, out, err = run_cli(["finetune", "sft", *args], capsys)
        assert code == 2, (args, err)
        assert needle in err and "Traceback" not in err, (args, err)
        assert err.strip().splitlines()[0].startswith("error:"), err
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == [
        "notes.txt"
    ]


def test_finetune_an_imported_hugging_face_model(tmp_path, capsys):
    """A run from `fornalha import hf` (its own ChatML template and special tokens) fine-tunes the same way."""
    transformers = pytest.importorskip("transformers")
    from fornalha.interop import import_hf
    from hf_helpers import byte_level_tokenizer

    model_dir = tmp_path / "hf"
    fast = byte_level_tokenizer(model_dir, QUESTIONS + ANSWERS, vocab_size=300)
    config = transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(model_dir)
    run = import_hf(model_dir, tmp_path / "run")
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in qa_rows()) + "\n")
    out = tmp_path / "chat"
    code, _, err = run_cli(
        ["finetune", "sft", "--run", str(run), "--data", str(data), "--out", str(out), "--val-fraction", "0.2",
         "--set", "train.max_steps=30", *FAST], capsys,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out / "sft_report.json").read_text())
    assert report["answer_loss_after"] < report["answer_loss_before"] - 0.5, report
    assert json.loads((out / "tokenizer" / "fornalha_tokenizer.json").read_text())["kind"] == "hf"


def test_finetune_sft_with_lora_trains_only_adapters_and_saves_a_plain_model(tmp_path, capsys):
    """--lora R: the base weights stay frozen, the adapters learn (the held-out answer loss falls),
    and best/ is an ordinary merged model whose change to each adapted matrix has rank <= R."""
    from fornalha.checkpoint import load_model

    base = make_base_run(tmp_path)
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in qa_rows()))
    out = tmp_path / "chat-lora"
    code, _, err = run_cli(
        ["finetune", "sft", "--run", str(base), "--data", str(data), "--out", str(out), "--val-fraction", "0.2",
         "--lora", "2", "--set", "train.max_steps=40", "--set", "train.lr=1e-2", *FAST], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "LoRA rank 2" in err
    report = json.loads((out / "sft_report.json").read_text())
    assert report["answer_loss_after"] < report["answer_loss_before"], report
    assert json.loads((out / "sft.json").read_text())["lora"] == 2

    before, _ = load_model(base)
    after, _ = load_model(out)  # plain GPT: no adapter keys left
    b, a = before.state_dict(), after.state_dict()
    assert set(a) == set(b)
    changed = [k for k in b if not torch.equal(a[k], b[k])]
    assert changed and all(k.endswith(".weight") and "proj" in k or "qkv" in k for k in changed), changed
    assert "transformer.wte.weight" not in changed and all("norm" not in k for k in changed)
    for k in changed:
        assert torch.linalg.matrix_rank(a[k] - b[k], atol=1e-5) <= 2, k

    code, _, err = run_cli(
        [
            "finetune",
            "sft",
            "--run",
            str(base),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "x"),
            "--lora",
            "0",
        ],
        capsys,
    )
    assert code == 2 and "--lora" in err
