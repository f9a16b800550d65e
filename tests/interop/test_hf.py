"""Hugging Face export and import: transformers loads our exports and computes what we compute.

Every case builds a small run folder by hand (a random GPT saved with `save_checkpoint` and a real
fornalha BPE tokenizer), exports it, and checks it with `transformers` itself: the model class,
logits (max abs difference <= 1e-4 in float32), greedy generation, the tokenizer's ids and chat
template, and that export -> import gives back the same weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fornalha.checkpoint import load_model, load_run, model_state_for_saving, save_checkpoint
from fornalha.errors import FornalhaError
from fornalha.interop import export_hf, import_hf
from fornalha.model import GPT, ModelConfig
from fornalha.tokenizer import BPETokenizer, load_tokenizer, train_bpe

transformers = pytest.importorskip("transformers")

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TEXTS = [
    "To be, or not to be, that is the question.",
    "Olá, coração! Ação é ótima; über naïve café 🙂 中文",
    "numbers 1234567 3.14159\n\n  indented\tand tabbed   ",
]
LOGIT_TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fornalha byte-level BPE (special tokens at ids 0..6) trained on Shakespeare."""
    text = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    out = tmp_path_factory.mktemp("tok")
    train_bpe([text], 512).save(out)
    return out


def make_run(root: Path, tokenizer_dir: Path, seed: int = 0, **overrides) -> tuple[Path, GPT]:
    """A run folder with a random model. Norm weights are perturbed so a mapping mistake shows."""
    cfg = ModelConfig(
        **{
            "vocab_size": 520,  # a little more than the tokenizer, as training pads it
            "block_size": 64,
            "n_layer": 2,
            "n_head": 4,
            "n_embd": 64,
            "rope_theta": 5000.0,
            "norm_eps": 1e-6,
            **overrides,
        }
    )
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    run = root / "run"
    shutil.copytree(tokenizer_dir, run / "tokenizer")
    save_checkpoint(
        run / "checkpoints" / "best",
        model_state_for_saving(model),
        {"model_config": cfg.to_dict(), "step": 7, "val_loss": 3.5},
    )
    return run, model.eval()


def load_hf(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


CONFIGS = {
    "llama-untied-mha": ({"tie_embeddings": False}, "LlamaForCausalLM"),
    "llama-tied-gqa": ({"tie_embeddings": True, "n_kv_head": 2}, "LlamaForCausalLM"),
    "qwen3-qknorm-gqa": ({"tie_embeddings": False, "n_kv_head": 1, "qk_norm": True}, "Qwen3ForCausalLM"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_loads_in_transformers_with_same_logits_and_generation(tmp_path, tokenizer_dir, name):
    overrides, arch = CONFIGS[name]
    run, model = make_run(tmp_path, tokenizer_dir, **overrides)
    out = export_hf(run, tmp_path / "hf")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / f).is_file(), f
    for f in ("special_tokens_map.json", "generation_config.json", "README.md"):
        assert (out / f).is_file(), f

    hf = load_hf(out)
    assert type(hf).__name__ == arch
    c = hf.config
    assert (c.num_key_value_heads, c.head_dim, c.max_position_embeddings) == (model.config.n_kv_head, 16, 64)
    assert c.tie_word_embeddings == model.config.tie_embeddings
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (0, 1, 2)
    assert hf.generation_config.eos_token_id == [6, 1]
    if model.config.tie_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()

    idx = torch.randint(0, model.config.vocab_size, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    diff = (ours - theirs).abs().max().item()
    print(f"{name}: max |logits diff| = {diff:.3g}")
    assert diff <= LOGIT_TOL

    prompt = idx[:, :6]
    hf.generation_config.eos_token_id = None  # compare full-length greedy runs
    want = model.generate(prompt, max_new_tokens=30, temperature=0)
    got = hf.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=2)
    assert got.shape == want.shape == (3, 36)
    assert torch.equal(got, want)


def test_exported_tokenizer_encodes_like_ours_and_has_chat_template(tmp_path, tokenizer_dir):
    run, _ = make_run(tmp_path, tokenizer_dir)
    out = export_hf(run, tmp_path / "hf")
    ours = load_tokenizer(run)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        ids = ours.encode(text)
        assert theirs.encode(text, add_special_tokens=False) == ids
        assert theirs.encode(text) == [0, *ids]  # <|bos|> added by the tokenizer, as in training
        assert theirs(text)["input_ids"] == [0, *ids]
        assert theirs.decode(ids) == text
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (0, 1, 2)
    assert theirs.model_max_length == 64

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Olá! What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ]
    rendered = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == "<|bos|><|system|>Be brief.<|end|><|user|>Olá! What is 2+2?<|end|>" + (
        "<|assistant|>4.<|end|><|user|>And 3+3?<|end|><|assistant|>"
    )
    ids = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert list(ids) == ours.encode_chat(messages, add_generation_prompt=True)
    assert list(ids).count(0) == 1  # the template's <|bos|>, not a second one from the tokenizer
    assert json.loads((out / "tokenizer_config.json").read_text())["add_bos_token"] is True
    assert "do not type it" in (out / "README.md").read_text()


def test_plain_tok_prompt_gives_the_greedy_continuation_of_fornalha_generate(tmp_path, tokenizer_dir):
    """`tok(prompt)` + `generate` in transformers continues exactly as `fornalha generate --prompt`."""
    import subprocess
    import sys

    run, _ = make_run(tmp_path, tokenizer_dir, qk_norm=True)
    out = export_hf(run, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = load_hf(out)
    for prompt in ("To be, or not to be", "Olá 2024: café"):
        cli = [sys.executable, "-m", "fornalha.cli", "generate", "--run", str(run), "--prompt", prompt]
        done = subprocess.run(
            [*cli, "--temperature", "0", "--max-new-tokens", "20"],
            capture_output=True,
            text=True,
            timeout=600,  # generous: a loaded CI machine
        )
        assert done.returncode == 0, done.stderr
        inputs = tok(prompt, return_tensors="pt")
        assert inputs["input_ids"][0, 0].item() == 0
        ids = hf.generate(**inputs, max_new_tokens=20, do_sample=False, pad_token_id=2)
        text = tok.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        assert done.stdout.removesuffix("\n") == text


def test_round_trip_export_import_gives_identical_weights_and_logits(tmp_path, tokenizer_dir):
    run, model = make_run(tmp_path, tokenizer_dir, tie_embeddings=False, n_kv_head=2, qk_norm=True)
    out = export_hf(run, tmp_path / "hf")
    back = import_hf(out, tmp_path / "back")

    model2, tok2, meta = load_run(back)
    assert model2.config == model.config
    sd, sd2 = model.state_dict(), model2.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    idx = torch.randint(0, 520, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], model2(idx)[0])
    assert meta["lineage"]["parent"] == f"hf:{out.resolve()}"
    assert isinstance(tok2, BPETokenizer) and tok2.encode(TEXTS[1]) == load_tokenizer(run).encode(TEXTS[1])
    report = json.loads((back / "import.json").read_text())
    assert report["tokenizer"]["fornalha_special_tokens"] is True
    import yaml

    from fornalha.train.config import RunConfig

    run_config = RunConfig.model_validate(yaml.safe_load((back / "config.yaml").read_text()))
    assert run_config.model_cfg() == model.config

    # the imported run exports again, to the same tensors
    again = export_hf(back, tmp_path / "hf2")
    from safetensors.torch import load_file

    a, b = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_import_sharded_safetensors_and_pytorch_bin(tmp_path, tokenizer_dir):
    from safetensors.torch import load_file, save_file

    run, model = make_run(tmp_path, tokenizer_dir, tie_embeddings=True)
    out = export_hf(run, tmp_path / "hf")
    tensors = load_file(str(out / "model.safetensors"))
    names = sorted(tensors)

    sharded = tmp_path / "sharded"
    shutil.copytree(out, sharded)
    (sharded / "model.safetensors").unlink()
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(sharded / fname), metadata={"format": "pt"})
    weight_map = {k: f for f, keys in halves.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )

    binary = tmp_path / "bin"
    shutil.copytree(out, binary)
    (binary / "model.safetensors").unlink()
    # a tied checkpoint that also stores lm_head, plus an old rotary buffer: both are dropped
    extra = {"lm_head.weight": tensors["model.embed_tokens.weight"].clone()}
    extra["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    torch.save(
        {**{k: v.to(torch.bfloat16) for k, v in tensors.items()}, **extra}, binary / "pytorch_model.bin"
    )

    for src, exact in ((sharded, True), (binary, False)):
        m2, _ = load_model(import_hf(src, tmp_path / f"run-{src.name}"))
        for k, v in model.state_dict().items():
            w = m2.state_dict()[k]
            assert w.dtype == torch.float32
            assert torch.equal(w, v) if exact else torch.allclose(w, v, atol=1e-2, rtol=1e-2), k


def test_bfloat16_export_loads(tmp_path, tokenizer_dir):
    run, model = make_run(tmp_path, tokenizer_dir)
    out = export_hf(run, tmp_path / "hf", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
    idx = torch.randint(0, 520, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (hf(idx).logits.float() - model(idx)[0]).abs().max().item()
    assert diff < 0.1  # bf16 rounding of weights and activations, nothing structural


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"mlp": "relu2"}, ["mlp='relu2'", "mlp: swiglu"]),
        ({"logit_softcap": 15.0}, ["logit_softcap=15.0", "logit_softcap: null"]),
    ],
)
def test_unexportable_config_gives_clear_error(tmp_path, tokenizer_dir, overrides, names):
    run, _ = make_run(tmp_path, tokenizer_dir, **overrides)
    with pytest.raises(FornalhaError, match="cannot export to Hugging Face") as err:
        export_hf(run, tmp_path / "hf")
    assert all(n in str(err.value) for n in names)
    assert not (tmp_path / "hf").exists()  # nothing half-written


def test_export_errors(tmp_path, tokenizer_dir):
    with pytest.raises(FornalhaError, match="does not exist"):
        export_hf(tmp_path / "nope", tmp_path / "hf")
    run, _ = make_run(tmp_path, tokenizer_dir)
    with pytest.raises(FornalhaError, match="unknown dtype"):
        export_hf(run, tmp_path / "hf", dtype="int4")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "precious.txt").write_text("keep me")
    with pytest.raises(FornalhaError, match="refusing to overwrite"):
        export_hf(run, busy)
    assert (busy / "precious.txt").read_text() == "keep me"
    # a previous export is replaced
    out = export_hf(run, tmp_path / "hf")
    assert export_hf(run, out) == out and (out / "config.json").is_file()


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_import_errors(tmp_path, tokenizer_dir):
    with pytest.raises(FornalhaError, match="does not exist"):
        import_hf(tmp_path / "missing", tmp_path / "r0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FornalhaError, match="no config.json"):
        import_hf(tmp_path / "empty", tmp_path / "r1")

    run, _ = make_run(tmp_path, tokenizer_dir)
    out = export_hf(run, tmp_path / "hf")
    gpt2 = _edit_config(out, tmp_path / "gpt2", architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(FornalhaError, match="'GPT2LMHeadModel' is not supported"):
        import_hf(gpt2, tmp_path / "r2")
    biased = _edit_config(out, tmp_path / "biased", attention_bias=True)
    with pytest.raises(FornalhaError, match="no biases"):
        import_hf(biased, tmp_path / "r3")
    scaled = _edit_config(out, tmp_path / "scaled", rope_scaling={"rope_type": "linear", "factor": 2.0})
    with pytest.raises(FornalhaError, match="rope scaling"):
        import_hf(scaled, tmp_path / "r4")
    wrong = _edit_config(out, tmp_path / "wrong", intermediate_size=96)
    with pytest.raises(FornalhaError, match="shape"):
        import_hf(wrong, tmp_path / "r5")
    no_weights = tmp_path / "noweights"
    shutil.copytree(out, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(FornalhaError, match="has no weights"):
        import_hf(no_weights, tmp_path / "r6")
    for i in range(7):  # nothing was left behind by a failed import
        assert not (tmp_path / f"r{i}").exists()
    import_hf(out, tmp_path / "ok")
    with pytest.raises(FornalhaError, match="not empty"):
        import_hf(out, tmp_path / "ok")


def test_import_foreign_tokenizer_is_recorded(tmp_path, tokenizer_dir):
    """A tokenizer without fornalha's special tokens imports, and the run says chat won't work."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    run, _ = make_run(tmp_path, tokenizer_dir)
    out = export_hf(run, tmp_path / "hf")
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    for f in ("fornalha_tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (foreign / f).unlink()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS * 20, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>"]))
    tok.save(str(foreign / "tokenizer.json"))

    back = import_hf(foreign, tmp_path / "back")
    report = json.loads((back / "import.json").read_text())["tokenizer"]
    assert report["fornalha_special_tokens"] is False
    assert "<|end|>" in report["missing_special_tokens"]
    assert "chat template does not apply" in report["note"]
    meta = json.loads((back / "checkpoints" / "best" / "meta.json").read_text())
    assert meta["import"]["tokenizer"]["fornalha_special_tokens"] is False
    assert (back / "tokenizer" / "tokenizer.json").is_file()


def test_cli_export_and_import(tmp_path, tokenizer_dir, capsys):
    from fornalha.cli import main

    run, _ = make_run(tmp_path, tokenizer_dir)
    with pytest.raises(SystemExit) as exit_:
        main(["export", "hf", "--run", str(run), "--out", str(tmp_path / "hf"), "--checkpoint", "best"])
    assert exit_.value.code in (0, None)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    with pytest.raises(SystemExit) as exit_:
        main(["import", "hf", "--model", str(tmp_path / "hf"), "--out", str(tmp_path / "back")])
    assert exit_.value.code in (0, None)
    assert (tmp_path / "back" / "checkpoints" / "best" / "model.safetensors").is_file()

    bad, _ = make_run(tmp_path / "bad", tokenizer_dir, mlp="relu2")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["export", "hf", "--run", str(bad), "--out", str(tmp_path / "nope")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "relu2" in err and "Traceback" not in err


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_import_model_saved_by_transformers(tmp_path, kind):
    """A checkpoint written by transformers' own save_pretrained (as a downloaded model would be)."""
    common = {
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rope_theta": 20000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": kind == "qwen3",
    }
    if kind == "llama":
        config = transformers.LlamaConfig(**common)
    else:
        config = transformers.Qwen3Config(head_dim=16, **common)
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")

    model, meta = load_model(import_hf(tmp_path / "hf", tmp_path / "run"))
    assert model.config.qk_norm == (kind == "qwen3")
    assert model.config.rope_theta == 20000.0 and model.config.n_kv_head == 2
    assert model.config.tie_embeddings == (kind == "qwen3")
    idx = torch.randint(0, 300, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = (model(idx)[0] - hf(idx).logits).abs().max().item()
    print(f"import {kind}: max |logits diff| = {diff:.3g}")
    assert diff <= LOGIT_TOL
    report = json.loads((tmp_path / "run" / "import.json").read_text())
    assert report["tokenizer"]["has_tokenizer_json"] is False  # no tokenizer was saved: recorded
