"""Parity of a trained run with llama.cpp: token ids and greedy continuations.

    python benchmarks/gguf_parity.py --run RUN_DIR [--port 8097] [--tokens 48]

Starts `benchmarks/llamacpp_server.sh RUN_DIR PORT 1` (which builds llama.cpp if needed and exports
the run to an f32 GGUF), then:

1. tokenizes held-out text through llama-server's /tokenize (with `<|bos|>` added, as llama.cpp
   does for prompts) and through fornalha's tokenizer: a Portuguese novel slice (accents), Python
   source from the standard library (code, numbers, indentation) and a line of mixed numbers;
2. continues each prompt greedily through /completion and through `fornalha generate --prompt
   --temperature 0` (a subprocess, the command users run), and compares the texts.

The server runs with flash attention off: llama.cpp's CPU flash-attention kernel rounds to f16,
which can flip near-ties (see docs/export.md). The last stdout line is JSON with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PROMPTS = [
    "To be, or not to be",
    "O senhor Afonso da Maia",
    "def parse(x):\n    return",
    "In 1984, 3 of 12345",
    "Olá, coração!",
]


def held_out_texts() -> dict[str, str]:
    return {
        "portuguese_novel_30kB": (SHARED / "pt" / "eca_os_maias.txt").read_text(encoding="utf-8")[
            100_000:130_000
        ],
        "python_stdlib_code": Path(json.__file__).with_name("decoder.py").read_text(encoding="utf-8"),
        "numbers": "In 1984, 3 of 12345 people paid $1,234.56 (7.5%) on 2024-01-31; π ≈ 3.14159265.",
    }


def wait_healthy(client: httpx.Client, server: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"llama-server exited with {server.returncode}")
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("llama-server did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path)
    parser.add_argument("--port", type=int, default=8097)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "src"))
    from fornalha.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.run / "tokenizer")
    env = {**os.environ, "PYTHON": sys.executable, "LLAMA_SERVER_EXTRA": "-fa off -ctk f32 -ctv f32"}
    script = ROOT / "benchmarks" / "llamacpp_server.sh"
    server = subprocess.Popen(["bash", str(script), str(args.run), str(args.port), "1"], env=env)
    result: dict = {"run": str(args.run), "tokenize": {}, "greedy": []}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=120) as client:
            wait_healthy(client, server, 1800)
            for name, text in held_out_texts().items():
                theirs = client.post("/tokenize", json={"content": text, "add_special": True}).json()[
                    "tokens"
                ]
                ours = [tokenizer.bos_id, *tokenizer.encode(text)]
                result["tokenize"][name] = {"tokens": len(ours), "identical": theirs == ours}
            for prompt in PROMPTS:
                body = {"prompt": prompt, "n_predict": args.tokens, "temperature": 0, "samplers": ["top_k"],
                        "top_k": 1, "cache_prompt": False}  # fmt: skip
                theirs = client.post("/completion", json=body).json()["content"]
                cmd = [sys.executable, "-m", "fornalha.cli", "generate", "--run", str(args.run), "--prompt", prompt,
                       "--temperature", "0", "--max-new-tokens", str(args.tokens)]  # fmt: skip
                ours = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.removesuffix(
                    "\n"
                )
                result["greedy"].append(
                    {"prompt": prompt, "identical": theirs == ours, "llamacpp": theirs, "fornalha": ours}
                )
                print(
                    f"{prompt!r}: {'identical' if theirs == ours else 'DIFFERENT'}\n  llama.cpp: {theirs!r}\n  fornalha:  {ours!r}"
                )
    finally:
        server.terminate()
        server.wait(timeout=30)
    result["tokens_compared"] = sum(v["tokens"] for v in result["tokenize"].values())
    result["tokenize_identical"] = all(v["identical"] for v in result["tokenize"].values())
    result["greedy_identical"] = sum(g["identical"] for g in result["greedy"])
    result["greedy_prompts"] = len(result["greedy"])
    print(json.dumps({k: v for k, v in result.items() if k != "greedy"}))


if __name__ == "__main__":
    main()
