"""GGUF export: the file reads back with `gguf.GGUFReader`, and llama.cpp itself agrees with us.

The fast cases build a small run by hand (a random GPT and a real fornalha BPE trained on
Shakespeare), export it and read the file back: metadata, tokenizer, tensor names, shapes and
values (with the rotary row permutation for the "llama" architecture).

The parity cases run llama.cpp's own binaries, built from the llama-cpp-python sdist by
`benchmarks/llamacpp_server.sh --build-only` (cached in ~/.cache/fornalha/llama.cpp/<version>; the
first build takes about 9 minutes on 2 cores and needs network access to PyPI, cmake and g++):
`llama-tokenize` must give our ids (plus the `<|bos|>` it adds) on held-out text with numbers,
code and accents, and `llama-server`'s /completion must give the greedy continuation our engine
gives for the same prompt (f32 weights, f32 KV cache and flash attention off: llama.cpp's CPU
flash-attention kernel rounds to f16, which flipped a near-tie of the random model at the 17th
token; with it off the continuations are identical, with the default f16 KV cache too).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from fornalha.checkpoint import model_state_for_saving, save_checkpoint
from fornalha.errors import FornalhaError
from fornalha.interop.gguf import export_gguf, permute_rotary
from fornalha.model import GPT, ModelConfig
from fornalha.tokenizer import load_tokenizer, train_bpe
from fornalha.tokenizer.bpe import GPT4_2DIGIT_SPLIT_PATTERN
from live_server import free_port

gguf = pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
SCRIPT = ROOT / "benchmarks" / "llamacpp_server.sh"
#: Held-out text (not Shakespeare): numbers of every length, code, accents, emoji, CJK, whitespace runs.
HELD_OUT = [
    "In 1984, 3 of 12345 people paid $1,234.56 (about 7.5%) on 2024-01-31.",
    "def f(x):\n    return x ** 2 + 10_000  # square\n\n\nprint(f(42))\n",
    "Olá, coração! A ação é ótima; über naïve café — ¿qué pasó? 🙂 中文 日本語",
    "  leading spaces,\ttabs\t\tand trailing   \r\nwindows line\r\n\r\nend",
    "It's we'll they're I'M you'VE don't 'quoted' \"double\" <|bos|> <tag/> {json: [1, 22, 333]}",
]


def _make_run(root: Path, tok_dir: Path, seed: int = 0, **overrides) -> tuple[Path, GPT]:
    cfg = ModelConfig(
        **{
            "vocab_size": 520,  # more than the tokenizer's 512, as training pads it
            "block_size": 64,
            "n_layer": 2,
            "n_head": 4,
            "n_embd": 64,
            "rope_theta": 5000.0,
            "norm_eps": 1e-6,
            "init_std": 0.3,  # large weights: peaked logits, so greedy never hinges on a near-tie
            **overrides,
        }
    )
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
        model.norm_f.weight.mul_(4.0)  # wider logit margins: greedy must not hinge on rounding
    run = root / "run"
    shutil.copytree(tok_dir, run / "tokenizer")
    save_checkpoint(
        run / "checkpoints" / "best", model_state_for_saving(model), {"model_config": cfg.to_dict()}
    )
    return run, model.eval()


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    out = tmp_path_factory.mktemp("tok")
    train_bpe([text], 512).save(out)
    return out


def _field(reader, key: str):
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


@pytest.mark.parametrize(
    "overrides, arch",
    [
        ({"qk_norm": True, "tie_embeddings": True}, "qwen3"),
        ({"tie_embeddings": False, "n_kv_head": 2}, "llama"),
    ],
)
def test_export_reads_back_with_metadata_tokenizer_and_tensors(tmp_path, tok_dir, overrides, arch):
    run, model = _make_run(tmp_path, tok_dir, **overrides)
    path = export_gguf(run, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(path)
    cfg = model.config
    assert _field(reader, "general.architecture") == arch
    assert _field(reader, "general.file_type") == 0  # ALL_F32
    assert _field(reader, f"{arch}.context_length") == 64
    assert _field(reader, f"{arch}.block_count") == 2
    assert _field(reader, f"{arch}.embedding_length") == 64
    assert _field(reader, f"{arch}.feed_forward_length") == cfg.mlp_hidden
    assert _field(reader, f"{arch}.attention.head_count") == 4
    assert _field(reader, f"{arch}.attention.head_count_kv") == cfg.n_kv_head
    assert _field(reader, f"{arch}.rope.freq_base") == pytest.approx(5000.0)
    assert _field(reader, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "llama-bpe"
    assert _field(reader, "tokenizer.ggml.add_bos_token") is True
    assert [_field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "eot", "padding")] == [
        0,
        1,
        6,
        2,
    ]
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == 520 and tokens[:2] == ["<|bos|>", "<|endoftext|>"] and tokens[519] == "[PAD519]"
    assert types[:7] == [3] * 7 and types[7] == 1 and types[519] == 5  # CONTROL, NORMAL, UNUSED
    hf = json.loads((run / "tokenizer" / "tokenizer.json").read_text())
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(hf["model"]["merges"]) == 512 - 7 - 256

    tensors = {t.name: t for t in reader.tensors}
    expected = 2 + 9 * 2 + (0 if cfg.tie_embeddings else 1) + (4 if cfg.qk_norm else 0)
    assert len(tensors) == expected
    assert ("output.weight" in tensors) == (not cfg.tie_embeddings)
    state = model.state_dict()

    def data(name: str) -> np.ndarray:
        t = tensors[name]
        return np.asarray(t.data).reshape([int(d) for d in reversed(t.shape)])

    np.testing.assert_array_equal(data("token_embd.weight"), state["wte.weight"].numpy())
    np.testing.assert_array_equal(
        data("blk.1.ffn_down.weight"), state["blocks.1.mlp.down_proj.weight"].numpy()
    )
    q_rows = cfg.n_head * cfg.head_dim
    kv_rows = cfg.n_kv_head * cfg.head_dim
    qkv = state["blocks.0.attn.qkv.weight"]
    q, k = qkv[:q_rows], qkv[q_rows : q_rows + kv_rows]
    if arch == "llama":  # interleaved rotary in llama.cpp's llama graph
        q, k = permute_rotary(q, cfg.n_head), permute_rotary(k, cfg.n_kv_head)
        # pairs (i, i + d/2) of each head become neighbours
        assert torch.equal(permute_rotary(qkv[:q_rows], cfg.n_head)[1], qkv[cfg.head_dim // 2])
    np.testing.assert_array_equal(data("blk.0.attn_q.weight"), q.numpy())
    np.testing.assert_array_equal(data("blk.0.attn_k.weight"), k.numpy())
    if cfg.qk_norm:
        np.testing.assert_array_equal(
            data("blk.1.attn_k_norm.weight"), state["blocks.1.attn.k_norm.weight"].numpy()
        )


def test_f16_export_halves_matrices_and_keeps_norms_f32(tmp_path, tok_dir):
    run, model = _make_run(tmp_path, tok_dir, qk_norm=True)
    reader = gguf.GGUFReader(export_gguf(run, tmp_path / "h.gguf", dtype="f16"))
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert _field(reader, "general.file_type") == 1
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_export_errors(tmp_path, tok_dir):
    run, _ = _make_run(tmp_path / "a", tok_dir, mlp="relu2", logit_softcap=30.0)
    with pytest.raises(FornalhaError, match="relu2.*logit_softcap"):
        export_gguf(run, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()

    old_tok = tmp_path / "oldtok"
    shutil.copytree(tok_dir, old_tok)
    meta = json.loads((old_tok / "fornalha_tokenizer.json").read_text())
    meta["pattern"] = GPT4_2DIGIT_SPLIT_PATTERN
    (old_tok / "fornalha_tokenizer.json").write_text(json.dumps(meta))
    run_old, _ = _make_run(tmp_path / "b", old_tok)
    with pytest.raises(FornalhaError, match="pattern llama.cpp does not implement"):
        export_gguf(run_old, tmp_path / "x.gguf")
    assert load_tokenizer(run_old).pattern == GPT4_2DIGIT_SPLIT_PATTERN  # old tokenizers still load

    good, _ = _make_run(tmp_path / "c", tok_dir)
    with pytest.raises(FornalhaError, match=r"\.gguf file"):
        export_gguf(good, tmp_path / "x.bin")
    precious = tmp_path / "notes.gguf"
    precious.write_text("not a gguf")
    with pytest.raises(FornalhaError, match="refusing to overwrite"):
        export_gguf(good, precious)
    assert precious.read_text() == "not a gguf"
    with pytest.raises(FornalhaError, match="dtype"):
        export_gguf(good, tmp_path / "x.gguf", dtype="q4_0")
    # a GGUF written earlier is replaced
    first = export_gguf(good, tmp_path / "x.gguf")
    assert export_gguf(good, first) == first and gguf.GGUFReader(first).tensors


@pytest.mark.parametrize("preset", ["tiny", "small", "gpt2-124m"])
def test_every_pipeline_preset_exports_to_hf_and_gguf(tmp_path, tok_dir, preset):
    """Each preset's model choices (MLP, soft-capping, QK-norm, tying), at a small width, exports both ways."""
    from fornalha.interop import export_hf
    from fornalha.train.config import PRESETS, load_config

    assert preset in PRESETS
    full = load_config(preset).model_cfg(vocab_size=520)
    small = {"n_layer": 1, "n_head": 2, "n_embd": 64, "block_size": 64, "mlp_hidden": None, "vocab_size": 520}
    run, _ = _make_run(tmp_path, tok_dir, **{**full.to_dict(), **small, "n_kv_head": None})
    assert (full.mlp, full.logit_softcap, full.qk_norm) == ("swiglu", None, True)
    hf_config = json.loads((export_hf(run, tmp_path / "hf") / "config.json").read_text())
    assert hf_config["architectures"] == ["Qwen3ForCausalLM"]
    assert _field(gguf.GGUFReader(export_gguf(run, tmp_path / "m.gguf")), "general.architecture") == "qwen3"


def test_cli_export_gguf(tmp_path, tok_dir):
    run, _ = _make_run(tmp_path, tok_dir, qk_norm=True)
    out = tmp_path / "cli.gguf"
    cmd = [sys.executable, "-m", "fornalha.cli", "export", "gguf", "--run", str(run), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and gguf.GGUFReader(out).tensors
    bad = subprocess.run([*cmd[:-1], str(tmp_path / "x.txt")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and ".gguf file" in bad.stderr


# --------------------------------------------------------------------------------------------
# Parity with llama.cpp's own binaries
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llamacpp_bin() -> Path:
    """The cached llama.cpp build; builds it (minutes) through the benchmark script when missing."""
    done = subprocess.run(
        ["bash", str(SCRIPT), "--build-only"],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**__import__("os").environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, f"llama.cpp build failed:\n{done.stderr[-3000:]}"
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the first test to use llamacpp_bin may build llama.cpp: ~10 min on 2 cores
def test_llama_tokenize_gives_our_ids_on_held_out_text(tmp_path, tok_dir, llamacpp_bin):
    run, _ = _make_run(tmp_path, tok_dir, qk_norm=True)
    path = export_gguf(run, tmp_path / "m.gguf")
    ours = load_tokenizer(run)
    novel = (SHARED / "pt" / "eca_os_maias.txt").read_text(encoding="utf-8")[100_000:130_000]
    code = Path(json.__file__).with_name("decoder.py").read_text(encoding="utf-8")  # Python's stdlib source
    for text in [*HELD_OUT, novel, code]:
        prompt = tmp_path / "prompt.txt"
        prompt.write_bytes(text.encode("utf-8"))
        done = subprocess.run(
            [
                str(llamacpp_bin / "llama-tokenize"),
                "-m",
                str(path),
                "-f",
                str(prompt),
                "--ids",
                "--no-escape",  # the file is the text itself: "\\n" stays two characters
                "--log-disable",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
        # llama.cpp adds <|bos|> (add_bos_token) and, with special-token parsing on, reads the
        # spelled "<|bos|>" as the token; ours encodes it as text. Compare around it.
        want = [0, *ours.encode(text)]
        if "<|bos|>" in text:
            before, after = text.split("<|bos|>")
            want = [0, *ours.encode(before), 0, *ours.encode(after)]
        assert theirs == want, text


@pytest.mark.slow
@pytest.mark.timeout(1800)  # as above: this test may be the one that builds (or waits for) llama.cpp
@pytest.mark.parametrize("overrides", [{"qk_norm": True}, {"tie_embeddings": False, "n_kv_head": 2}])
def test_llama_server_greedy_continuation_matches_ours(tmp_path, tok_dir, llamacpp_bin, overrides):
    run, model = _make_run(tmp_path, tok_dir, **overrides)
    path = export_gguf(run, tmp_path / "m.gguf")
    tokenizer = load_tokenizer(run)
    prompts = ["To be, or not to be", "Olá 2024: café & code = f(3.14)"]
    want = []
    for prompt in prompts:
        ids = torch.tensor([[0, *tokenizer.encode(prompt)]])
        want.append(model.generate(ids, max_new_tokens=24, temperature=0)[0, ids.shape[1] :].tolist())

    port = free_port()
    server = subprocess.Popen(
        [
            str(llamacpp_bin / "llama-server"),
            "-m",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "-np",
            "1",
            "-t",
            "2",
            "-c",
            "64",
            "-ctk",
            "f32",
            "-ctv",
            "f32",
            "-fa",
            "off",
            "--no-webui",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "llama-server did not become healthy in 60 s"
                time.sleep(0.2)
            for prompt, expected in zip(prompts, want, strict=True):
                body = {"prompt": prompt, "n_predict": 24, "temperature": 0, "top_k": 1, "return_tokens": True,
                        "cache_prompt": False, "ignore_eos": True, "samplers": ["top_k"]}  # fmt: skip
                reply = client.post("/completion", json=body).json()
                assert reply["tokens"] == expected, prompt
                tokenized = client.post("/tokenize", json={"content": prompt, "add_special": True}).json()
                assert tokenized["tokens"] == [0, *tokenizer.encode(prompt)]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_llamacpp_server_script_serves_the_run(tmp_path, tok_dir, llamacpp_bin):
    """benchmarks/llamacpp_server.sh RUN_DIR PORT NP: exports the run and serves it with NP slots."""
    import os

    run, _ = _make_run(tmp_path, tok_dir, qk_norm=True)
    port = free_port()
    env = {**os.environ, "PYTHON": sys.executable}
    server = subprocess.Popen(
        ["bash", str(SCRIPT), str(run), str(port), "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 90
            while True:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "llama-server did not become healthy in 90 s"
                time.sleep(0.2)
            assert (run / "export" / "model-f32.gguf").is_file()
            slots = client.get("/slots").json()
            assert len(slots) == 2 and slots[0]["n_ctx"] == 64
            reply = client.post(
                "/completion", json={"prompt": "To be", "n_predict": 5, "temperature": 0}
            ).json()
            assert reply["tokens_predicted"] >= 1
    finally:
        server.terminate()
        server.wait(timeout=30)
    bad = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "nope"), "1"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "run folder not found" in bad.stderr
