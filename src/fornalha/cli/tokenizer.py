"""`fornalha tokenizer train|encode|decode|eval`: thin commands over `fornalha.tokenizer`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fornalha.errors import ConfigError

console = Console()
tokenizer_app = typer.Typer(
    help="Train a byte-level BPE (or char) tokenizer on a prepared dataset; encode, decode, evaluate.",
    no_args_is_help=True,
)


@tokenizer_app.command("train")
def train(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder from `fornalha data prepare`.")],
    out: Annotated[Path, typer.Option("--out", help="Tokenizer folder to write.")],
    vocab_size: Annotated[
        int, typer.Option("--vocab-size", help="Vocabulary size, special tokens included.")
    ] = 4096,
    kind: Annotated[
        str, typer.Option("--kind", help="bpe (byte-level BPE) or char (one token per character).")
    ] = "bpe",
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", help="Train on at most this many bytes of text.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Dataset split to train on.")] = "train",
    pattern: Annotated[
        str,
        typer.Option(
            "--pattern",
            help="BPE split regex: llama3 (GPT-4's cl100k, llama.cpp's llama-bpe; exports to GGUF), "
            "gpt4 (the same), gpt4-2digit (nanochat's, digit runs <= 2; no GGUF export), or a regex.",
        ),
    ] = "llama3",
) -> None:
    """Train a tokenizer and save it (tokenizer.json, tokenizer_config.json, fornalha_tokenizer.json).

    Example: fornalha tokenizer train --data data/pt --vocab-size 4096 --out tok/pt
    """
    import regex

    from fornalha.tokenizer import train_tokenizer
    from fornalha.tokenizer.bpe import PATTERNS

    regex_pattern = PATTERNS.get(pattern, pattern)
    try:
        regex.compile(regex_pattern)
    except regex.error as exc:
        raise ConfigError(f"--pattern is neither {' nor '.join(PATTERNS)} nor a valid regex: {exc}") from exc
    if max_bytes is not None and max_bytes <= 0:
        raise ConfigError(f"--max-bytes must be positive, got {max_bytes}")
    from fornalha.outputs import claim

    owned = claim(out, "tokenizer train")  # refused before training when --out is not ours
    stats: dict = {}
    tokenizer = train_tokenizer(
        data, vocab_size, kind=kind, max_bytes=max_bytes, split=split, stats=stats, pattern=regex_pattern
    )
    save_tokenizer(tokenizer, owned)
    mb = stats["bytes"] / 1e6
    console.print(
        f"trained {kind} tokenizer: vocab {tokenizer.vocab_size} on {stats['documents']} documents, "
        f"{mb:.1f} MB in {stats['seconds']:.1f} s ({mb / max(stats['seconds'], 1e-9):.1f} MB/s) -> {out}"
    )


def save_tokenizer(tokenizer, owned) -> None:  # noqa: ANN001 - Tokenizer, Output (imported lazily)
    """Save into a staging folder, then publish: only files an earlier `tokenizer train` wrote are replaced."""
    import shutil

    stage = owned.staging()
    try:
        tokenizer.save(stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    owned.publish(stage, last=["fornalha_tokenizer.json"])


@tokenizer_app.command("encode")
def encode(
    tokenizer: Annotated[Path, typer.Option("--tokenizer", help="Tokenizer folder (or a run folder).")],
    text: Annotated[str | None, typer.Option("--text", help="Text to encode.")] = None,
    file: Annotated[Path | None, typer.Option("--file", help="UTF-8 text file to encode.")] = None,
) -> None:
    """Print the token ids of a text (no special tokens added).

    Example: fornalha tokenizer encode --tokenizer tok/pt --text "Olá, mundo!"
    """
    from fornalha.tokenizer import load_tokenizer

    if (text is None) == (file is None):
        raise ConfigError("give exactly one of --text or --file")
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {file} as UTF-8 text: {exc}") from exc
    ids = load_tokenizer(tokenizer).encode(text or "")
    print(" ".join(map(str, ids)))


@tokenizer_app.command("decode")
def decode(
    tokenizer: Annotated[Path, typer.Option("--tokenizer", help="Tokenizer folder (or a run folder).")],
    ids: Annotated[str, typer.Option("--ids", help='Token ids separated by spaces or commas, e.g. "1 2 3".')],
) -> None:
    """Print the text of a list of token ids.

    Example: fornalha tokenizer decode --tokenizer tok/pt --ids "301 1022 44"
    """
    from fornalha.tokenizer import load_tokenizer

    parts = [p for p in re.split(r"[\s,]+", ids.strip().strip("[]")) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise ConfigError(f"--ids must be non-negative integers separated by spaces or commas, got {ids!r}")
    tok = load_tokenizer(tokenizer)
    values = [int(p) for p in parts]
    bad = [v for v in values if v >= tok.vocab_size]
    if bad:
        raise ConfigError(f"ids out of range for a vocabulary of {tok.vocab_size}: {bad[:5]}")
    print(tok.decode(values))


@tokenizer_app.command("eval")
def evaluate(
    tokenizer: Annotated[Path, typer.Option("--tokenizer", help="Tokenizer folder (or a run folder).")],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder from `fornalha data prepare`.")],
    split: Annotated[str, typer.Option("--split", help="Dataset split to measure.")] = "val",
    max_bytes: Annotated[
        int | None, typer.Option("--max-bytes", help="Measure at most this many bytes.")
    ] = None,
) -> None:
    """Bytes and characters per token on a split, next to the char-level and byte baselines.

    Example: fornalha tokenizer eval --tokenizer tok/pt --data data/pt --split val
    """
    from fornalha.tokenizer.evaluate import evaluate_tokenizer

    report = evaluate_tokenizer(tokenizer, data, split=split, max_bytes=max_bytes)
    table = Table(
        title=f"{split}: {report['documents']} documents, {report['bytes']:,} bytes, {report['chars']:,} chars"
    )
    for column in ("tokenizer", "tokens", "bytes/token", "chars/token", "tokens vs bytes"):
        table.add_column(column, justify="left" if column == "tokenizer" else "right")
    for row in report["rows"]:
        table.add_row(
            row["name"],
            f"{row['tokens']:,}",
            f"{row['bytes_per_token']:.3f}",
            f"{row['chars_per_token']:.3f}",
            f"{row['tokens_vs_bytes']:.3f}",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the `tokenizer` command group to the main app."""
    app.add_typer(tokenizer_app, name="tokenizer")
