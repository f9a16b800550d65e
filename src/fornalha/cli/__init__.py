"""The `fornalha` command line: one typer app, one sub-module per pipeline stage.

Each stage module exposes `register(app)`, which adds its commands. Commands import their
heavy dependencies (torch, datasets) inside the function, so `fornalha --help` stays fast.

Errors: a `FornalhaError` (bad input, bad config, corrupt file) prints one red line and exits
with code 2. `--debug` anywhere on the command line shows the full traceback instead.
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from fornalha.errors import FornalhaError

err_console = Console(stderr=True)

app = typer.Typer(
    name="fornalha",
    help=(
        "fornalha: forge a language model from raw text.\n\n"
        "Stages, in order: data prepare -> tokenizer train -> data tokenize -> train -> eval -> "
        "generate / chat -> export.  `fornalha pipeline` runs them all."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register_all() -> None:
    from fornalha.cli import data, evaluate, infer, interop, pipeline, recommend, tokenizer, train

    for module in (data, tokenizer, train, evaluate, pipeline, infer, interop, recommend):
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("FORNALHA_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    try:
        app(args=args, prog_name="fornalha", standalone_mode=True)
    except FornalhaError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # an internal error: still one line unless --debug
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} (run again with --debug for the traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
