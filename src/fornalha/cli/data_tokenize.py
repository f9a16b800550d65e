"""CLI commands: data_tokenize (filled in by that stage's work)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the given app."""
