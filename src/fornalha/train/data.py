"""From `--data` (a prepared dataset or a shards folder) and `--tokenizer` to token shards.

    shards folder (index.json)      -> used as is; its tokenizer/ unless --tokenizer names the same one
    dataset folder (train/, val/)   -> tokenizer: the given folder, 'char' (trained), or BPE (trained)
                                       -> tokenized into a cache keyed by the tokenizer's hash

Caches live in DATASET_DIR/.fornalha-cache/ (or RUN_DIR/cache/ when the dataset folder is read
only), so a second run (or every trial of a sweep) reuses the tokenizer and the shards.
"""

from __future__ import annotations

import os
from pathlib import Path

from fornalha.errors import DataError
from fornalha.files import publish_dir


def is_shards_dir(path: Path) -> bool:
    return (path / "index.json").is_file()


def is_dataset_dir(path: Path) -> bool:
    from fornalha.data.dataset import is_dataset_dir as complete_dataset

    return complete_dataset(path)


def _cache_root(dataset_dir: Path, run_dir: Path) -> Path:
    root = dataset_dir / ".fornalha-cache"
    try:
        root.mkdir(exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    return run_dir / "cache"


def resolve_data(
    data: str | Path | None,
    tokenizer: str | None,
    vocab_size: int,
    run_dir: Path,
    progress: bool = True,
) -> tuple[Path, Path]:
    """(shards_dir, tokenizer_dir) for a run, training a tokenizer and tokenizing when needed."""
    from fornalha.data.shards import dataset_sha256, read_index, tokenizer_sha256
    from fornalha.tokenizer import find_tokenizer_dir, train_tokenizer
    from fornalha.tokenizer.encode_dataset import tokenize_dataset

    if data is None:
        raise DataError("no training data: pass --data DATASET_DIR or SHARDS_DIR (or set data.path)")
    path = Path(data)
    if not path.exists():
        raise DataError(f"--data {path} does not exist")

    if is_shards_dir(path):
        shards_tok = path / "tokenizer"
        if tokenizer in (None, "char"):
            if not (shards_tok / "fornalha_tokenizer.json").is_file():
                raise DataError(f"shards folder {path} has no tokenizer/ copy; pass --tokenizer")
            if tokenizer == "char" and read_index(path).get("tokenizer_kind", "char") != "char":
                raise DataError(f"shards in {path} were not made with a char tokenizer")
            return path, shards_tok
        tok_dir = find_tokenizer_dir(tokenizer)
        index = read_index(path)
        if index.get("tokenizer_sha256") not in (None, tokenizer_sha256(tok_dir)):
            raise DataError(
                f"shards in {path} were made with another tokenizer than {tok_dir}; "
                "omit --tokenizer or re-tokenize with `fornalha data tokenize`"
            )
        return path, tok_dir

    if not is_dataset_dir(path):
        raise DataError(
            f"--data {path} is neither a prepared dataset (manifest.json) nor a shards folder "
            "(index.json); create one with `fornalha data prepare` or `fornalha data tokenize`"
        )
    cache = _cache_root(path, run_dir)
    if tokenizer in (None, "char"):
        kind = tokenizer or "bpe"
        tag = "char" if kind == "char" else f"bpe-{vocab_size}"
        tok_dir = cache / f"tokenizer-{tag}-{dataset_sha256(path)[:12]}"
        if not (tok_dir / "fornalha_tokenizer.json").is_file():
            tok = train_tokenizer(path, vocab_size, kind=kind)
            tmp = tok_dir.with_name(tok_dir.name + f".tmp-{os.getpid()}")
            tok.save(tmp)
            publish_dir(tmp, tok_dir)
    else:
        tok_dir = find_tokenizer_dir(tokenizer)
    shards_dir = cache / f"tokens-{tokenizer_sha256(tok_dir)[:12]}"
    tokenize_dataset(path, tok_dir, shards_dir, progress=progress)
    return shards_dir, tok_dir
