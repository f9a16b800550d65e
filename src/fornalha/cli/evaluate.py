"""CLI commands of the evaluate stage (filled in by that stage's work)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""
