"""A folder of documents with known answers, a tiny run folder, and a live `fornalha serve --docs`."""

from __future__ import annotations

import gzip
from pathlib import Path

import live_server

KEY = "sk-assistant-test"

#: file -> content. Each topic has words no other file shares, so the right passage is known.
DOCS = {
    "kitchen/bread.md": "# Baking bread\n\nMix flour, water, salt and yeast. Knead the dough for ten minutes, "
    "let it rise for two hours, then bake at 230 degrees until the crust is brown.\n\n"
    "A sourdough starter replaces the yeast: feed it flour and water every day.",
    "garden/tomatoes.txt": "Tomatoes need six hours of sun a day. Water the roots, not the leaves, "
    "and tie the stems to a stake as the plants grow.\n\nPick the fruit when it is red and slightly soft.",
    "notas/bicicleta.md": "# Manutenção da bicicleta\n\nLubrifique a corrente a cada 300 quilómetros e "
    "verifique a pressão dos pneus antes de cada passeio. Os travões gastos fazem barulho.",
    "pages/telescope.html": "<html><head><title>Telescopes</title></head><body><h1>Choosing a telescope</h1>"
    "<p>The aperture, the diameter of the main mirror or lens, decides how faint the stars you can see are."
    "</p><p>A Dobsonian mount is cheap and steady.</p></body></html>",
}
#: question -> the file whose passage answers it
QUESTIONS = {
    "How long should I knead the dough?": "kitchen/bread.md",
    "how many hours of sun do tomato plants need": "garden/tomatoes.txt",
    "Quando devo lubrificar a corrente?": "notas/bicicleta.md",  # accents folded: "quilometros" etc.
    "what does the aperture of a telescope decide": "pages/telescope.html",
    "what is a sourdough starter": "kitchen/bread.md",
}
ALPHABET = "".join(sorted(set("".join(DOCS.values()) + "".join(QUESTIONS) + "…[]:,.?!'\"-—()0123456789\n ")))


def write_docs(root: Path) -> Path:
    """The documents above under root/docs, plus one gzipped copy and one binary file to skip."""
    docs = root / "docs"
    for rel, text in DOCS.items():
        (docs / rel).parent.mkdir(parents=True, exist_ok=True)
        (docs / rel).write_text(text, encoding="utf-8")
    with gzip.open(docs / "archive.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("Old notes: the kettle descales with vinegar.")
    (docs / "photo.txt").write_bytes(bytes(range(256)) * 4)  # binary: skipped, said so
    return docs


def make_run(root: Path, block_size: int = 2048) -> Path:
    """A char tokenizer over ALPHABET and a random tiny model whose special tokens never win (answers run
    to max_tokens, so a test controls their length)."""
    import torch

    from fornalha.checkpoint import model_state_for_saving, save_checkpoint
    from fornalha.model import GPT, ModelConfig
    from fornalha.tokenizer.char import CharTokenizer

    run = root / "run"
    tok = CharTokenizer.train([ALPHABET])
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2,
                      n_embd=32, init_std=0.3)  # fmt: skip
    model = GPT(cfg)
    with torch.no_grad():  # special tokens (end of turn, ...) get logit 0; some character always beats it
        for name, weight in model.named_parameters():
            if name in ("wte.weight", "lm_head.weight"):
                weight[: len(tok.special_ids) + 1] = 0.0
    save_checkpoint(run / "checkpoints" / "best", model_state_for_saving(model),
                    {"model_config": model.config.to_dict(), "step": 0})  # fmt: skip
    return run


class Server(live_server.Server):
    """`fornalha serve` of a run with the assistant tests' key (tests/live_server.py)."""

    def __init__(self, run: Path, *args: str, timeout: float = 90) -> None:
        super().__init__(run, *args, key=KEY, timeout=timeout)
