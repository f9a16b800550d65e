"""`fornalha export hf|gguf` and `fornalha import hf`: thin commands over `fornalha.interop`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)

export_app = typer.Typer(
    help="Export a trained run to other ecosystems (hf: a Hugging Face transformers folder; "
    "gguf: one file for llama.cpp).",
    no_args_is_help=True,
)
import_app = typer.Typer(
    help="Import a model from other ecosystems into a run folder (hf: a local Llama/Qwen3 folder).",
    no_args_is_help=True,
)


@export_app.command("hf")
def export_hf_command(
    run: Annotated[Path, typer.Option("--run", help="Run folder from `fornalha train` (or `import hf`).")],
    out: Annotated[Path, typer.Option("--out", help="Hugging Face model folder to write.")],
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="best, last, or a step folder name such as step-000200.")
    ] = "best",
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weight precision: float32, bfloat16 or float16.")
    ] = "float32",
) -> None:
    """Write a Hugging Face model folder (Llama architecture; Qwen3 when QK-norm is on).

    The folder loads with transformers' AutoModelForCausalLM / AutoTokenizer, serves with `vllm serve DIR`; for llama.cpp use `fornalha export gguf`.

    Examples:

      fornalha export hf --run runs/tiny --out exports/tiny-hf

      fornalha export hf --run runs/tiny --out exports/tiny-bf16 --checkpoint last --dtype bfloat16
    """
    from fornalha.interop.hf import export_hf

    path = export_hf(run, out, which=checkpoint, dtype=dtype)

    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    console.print(f"exported {run} ({checkpoint}, {dtype}) as {arch} -> {path}")
    print(path)


@export_app.command("gguf")
def export_gguf_command(
    run: Annotated[Path, typer.Option("--run", help="Run folder from `fornalha train`.")],
    out: Annotated[Path, typer.Option("--out", help="GGUF file to write (FILE.gguf).")],
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="best, last, or a step folder name such as step-000200.")
    ] = "best",
    dtype: Annotated[
        str, typer.Option("--dtype", help="Weight matrices: f32 or f16 (norms stay f32).")
    ] = "f32",
) -> None:
    """Write one GGUF file for llama.cpp (llama-server, llama-cli); Qwen3 architecture when QK-norm is on, else Llama.

    The file names llama.cpp's `llama-bpe` pre-tokenizer, so llama.cpp cuts text exactly as fornalha does, and adds <|bos|> in front of prompts as training did.

    Examples:

      fornalha export gguf --run runs/tiny --out exports/tiny-f32.gguf

      llama-server -m exports/tiny-f32.gguf --port 8080
    """
    from fornalha.interop.gguf import export_gguf

    path = export_gguf(run, out, which=checkpoint, dtype=dtype)
    console.print(f"exported {run} ({checkpoint}, {dtype}) -> {path}")
    print(path)


@import_app.command("hf")
def import_hf_command(
    model: Annotated[Path, typer.Option("--model", help="Local Hugging Face model folder (Llama or Qwen3).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to create (must not exist or be empty).")],
) -> None:
    """Turn a local Hugging Face Llama/Qwen3 checkpoint into a fornalha run folder.

    The run can then be used by `fornalha generate --run`, `fornalha eval --run` and `fornalha train --init-from`. Weights are stored in float32.

    Examples:

      fornalha import hf --model exports/tiny-hf --out runs/tiny-again

      fornalha import hf --model ~/models/SmolLM2-135M --out runs/smollm
    """
    from fornalha.interop.hf import import_hf, import_notes

    path = import_hf(model, out)
    console.print(f"imported {model} -> {path}")
    for note in import_notes(path):
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    print(path)


def register(app: typer.Typer) -> None:
    """Add the `export` and `import` groups to the main app."""
    app.add_typer(export_app, name="export")
    app.add_typer(import_app, name="import")
