"""`fornalha data tokenize`: a prepared dataset -> binary token shards (see `fornalha.data.shards`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fornalha.errors import ConfigError

console = Console()


def tokenize(
    data: Annotated[Path, typer.Option("--data", help="Dataset folder from `fornalha data prepare`.")],
    tokenizer: Annotated[
        Path, typer.Option("--tokenizer", help="Tokenizer folder from `fornalha tokenizer train`.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Shards folder to write.")],
    shard_tokens: Annotated[int, typer.Option("--shard-tokens", help="Tokens per shard file.")] = 100_000_000,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Encoder threads (default: all cores).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached shards match.")] = False,
) -> None:
    """Tokenize every split into binary shards (<|bos|> before each document) with an index.json.

    Running it again with the same dataset and tokenizer reuses the shards.

    Example: fornalha data tokenize --data data/pt --tokenizer tok/pt --out shards/pt
    """
    from fornalha.tokenizer.encode_dataset import tokenize_dataset

    if shard_tokens < 1:
        raise ConfigError(f"--shard-tokens must be positive, got {shard_tokens}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be positive, got {threads}")
    index = tokenize_dataset(
        data, tokenizer, out, shard_tokens=shard_tokens, num_threads=threads, force=force
    )
    state = "reused cached shards" if index.get("cached") else f"{index['mb_per_s']} MB/s"
    table = Table(title=f"{out}  ({index['dtype']}, vocab {index['vocab_size']}, {state})")
    for column in ("split", "documents", "bytes", "tokens", "bytes/token", "shards"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for name, split in index["splits"].items():
        table.add_row(
            name,
            f"{split['documents']:,}",
            f"{split['bytes']:,}",
            f"{split['tokens']:,}",
            f"{split['bytes'] / max(split['tokens'], 1):.3f}",
            str(len(split["shards"])),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `tokenize` to the data command group."""
    app.command("tokenize")(tokenize)
