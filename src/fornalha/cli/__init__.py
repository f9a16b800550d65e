"""The `fornalha` command line: one typer app, one sub-module per pipeline stage.

Each stage module exposes `register(app)`, which adds its commands. Commands import their
heavy dependencies (torch, datasets) inside the function, so `fornalha --help` stays fast.

Errors: a `FornalhaError` (bad input, bad config, corrupt file) prints one red line and exits
with code 2, and so does an OS error the user can fix (permission denied, disk full, read-only
file system, a file where a folder must be); anything else is a bug: "internal error", exit 1.
`--debug` anywhere on the command line shows the full traceback instead.

The error is the first line of stderr: lines a command prints before its work starts
(`device: …`) are held back until its first other output, and dropped when it fails first.
"""

from __future__ import annotations

import errno
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
    from fornalha.cli import (
        data,
        evaluate,
        explain,
        feedback,
        finetune,
        improve,
        infer,
        interop,
        pipeline,
        recommend,
        registry,
        serve,
        tokenizer,
        train,
    )  # fmt: skip

    modules = (
        data,
        tokenizer,
        train,
        evaluate,
        pipeline,
        infer,
        interop,
        serve,
        recommend,
        finetune,
        feedback,
        registry,
        explain,
        improve,
    )
    for module in modules:
        module.register(app)


_register_all()


# OS errors caused by the environment, not by a bug: they are user errors (exit 2).
USER_OS_ERRORS = {
    errno.EACCES,
    errno.EPERM,
    errno.ENOSPC,
    errno.EROFS,
    errno.EDQUOT,
    errno.ENOTDIR,
    errno.EISDIR,
}


class _ReleaseOnWrite:
    """A stdout/stderr wrapper: the first write prints the held-back `device: …` lines before it."""

    def __init__(self, stream, stderr):  # noqa: ANN001 - text streams
        self._stream, self._stderr = stream, stderr

    def write(self, text: str) -> int:
        if text:
            from fornalha import device

            device.release_announcements(self._stderr)
        return self._stream.write(text)

    def __getattr__(self, name: str):  # noqa: ANN204 - isatty, fileno, flush, encoding, …
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    from fornalha import device

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("FORNALHA_DEBUG") == "1"
    args = [a for a in args if a != "--debug"]
    real_out, real_err = sys.stdout, sys.stderr
    device.hold_announcements()
    sys.stdout, sys.stderr = _ReleaseOnWrite(real_out, real_err), _ReleaseOnWrite(real_err, real_err)
    try:
        app(args=args, prog_name="fornalha", standalone_mode=True)
    except (FornalhaError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in USER_OS_ERRORS:
            _internal_error(exc, debug)  # e.g. a missing file the code itself should have made
        if debug:
            raise
        device.release_announcements(None)  # the error comes first: drop what was held back
        message = str(exc) if isinstance(exc, FornalhaError) else _os_message(exc)
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # an internal error: still one line unless --debug
        _internal_error(exc, debug)
    finally:
        device.release_announcements(real_err, stop=True)
        sys.stdout, sys.stderr = real_out, real_err


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc} (check the path, its permissions and the free disk space)"


def _internal_error(exc: BaseException, debug: bool) -> None:
    if debug:
        raise exc
    from fornalha import device

    device.release_announcements(None)
    err_console.print(
        f"[bold red]internal error:[/] {type(exc).__name__}: {escape(str(exc))} (run again with --debug for the traceback)",
        highlight=False,
        soft_wrap=True,
    )
    sys.exit(1)


if __name__ == "__main__":
    main()
