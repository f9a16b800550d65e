"""One rich progress bar for work measured in bytes (preparing a dataset, tokenizing it).

    with byte_progress("tokenizing train", total=None, enabled=True) as advance:
        for chunk in work():
            advance(len(chunk))

It draws on stderr (stdout stays for results) and disappears when done; with ``enabled=False`` or
when stderr is not a terminal it draws nothing, and ``advance`` costs a function call. The training
loop's bar (steps or a time budget) lives in `fornalha.train.monitor`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def byte_progress(
    label: str, total: int | None = None, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A transient bar labelled ``label`` over ``total`` bytes (None: unknown); yields ``advance(n_bytes)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.update(task, advance=n)
