"""`fornalha explain`: one self-contained HTML page showing what a trained model does with a text.

A thin command over `fornalha.explain`: load the run, explain the text, write the page.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from fornalha.errors import ConfigError, FornalhaError


def explain_command(
    run: Annotated[
        Path, typer.Option("--run", help="Run folder from `fornalha train` (or `fornalha import hf`).")
    ],
    text: Annotated[
        str | None, typer.Option("--text", help="The text to explain (at most the model's context).")
    ] = None,
    text_file: Annotated[
        Path | None, typer.Option("--text-file", help="Read the text from this UTF-8 file instead of --text.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="The HTML page to write.")] = Path("explain.html"),
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="best, last, or a step folder name such as step-000200.")
    ] = "best",
    device: Annotated[
        str, typer.Option("--device", help="auto (cuda -> mps -> cpu), cpu, cuda, mps.")
    ] = "cpu",
) -> None:
    """Write one HTML page that shows what the model does with a text: its tokens (ids, bytes), the
    attention of every layer and head, the top-10 next tokens at each position and each token's loss.

    The page needs no server and no network: open it in any browser.

      fornalha explain --run runs/demo --text "def add(a, b): return a + b" --out explain.html

      fornalha explain --run runs/novel --text-file speech.txt --out speech.html
    """
    from fornalha.checkpoint import load_run
    from fornalha.device import pick_device
    from fornalha.explain import explain_text, render_page
    from fornalha.explain.page import written_by_explain
    from fornalha.outputs import check_file_target

    if (text is None) == (text_file is None):
        raise ConfigError("give exactly one of --text or --text-file")
    if text_file is not None:
        try:
            text = text_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FornalhaError(f"--text-file {text_file} does not exist") from None
        except UnicodeDecodeError:
            raise FornalhaError(f"--text-file {text_file} is not UTF-8 text") from None
    assert text is not None
    if not text.strip():
        raise FornalhaError("the text to explain is empty; give some text with --text")
    if out.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--out {out} should be an .html file")
    check_file_target(out, is_ours=written_by_explain(out))
    if not run.exists():
        raise FornalhaError(f"run folder {run} does not exist; train one with `fornalha train` or pass --run")

    model, tokenizer, meta = load_run(run, which=checkpoint, device=pick_device(device))
    model.float()
    explanation = explain_text(model, tokenizer, text)
    page = render_page(explanation, title=f"fornalha explain: {run.resolve().name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    if len(page) > 50e6:
        print(
            f"note: the page is {len(page) / 1e6:.0f} MB (attention grows with the square of the text); "
            "a browser may open it slowly: explain a shorter text",
            file=sys.stderr,
        )
    s, a = explanation["summary"], explanation["attention"]
    print(
        f"wrote {out} ({len(page) / 1e6:.2f} MB): {len(explanation['tokens'])} tokens, "
        f"{a['n_layer']} layers x {a['n_head']} heads, mean loss {s['mean_loss_bits']:.2f} bits/token "
        f"(checkpoint {meta.get('path', run)})",
        file=sys.stderr,
    )


def register(app: typer.Typer) -> None:
    """Add `explain` to the main app."""
    app.command("explain", no_args_is_help=True)(explain_command)
