"""`fornalha tokenizer train|encode|decode|eval` end to end, their errors, and the eval figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from fornalha.cli import main
from fornalha.data.dataset import write_dataset
from fornalha.tokenizer import load_tokenizer
from fornalha.tokenizer.evaluate import compare, evaluate_tokenizer, measure

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out, out.err


@pytest.fixture(scope="module")
def books() -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted((SHARED / "pt").glob("*.txt"))]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, books: list[str]) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), {"train": books[:-1], "val": books[-1:]})


def test_train_encode_decode_eval(dataset: Path, books: list[str], tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "tok"
    code, out, _ = run(
        ["tokenizer", "train", "--data", str(dataset), "--vocab-size", "1024", "--out", str(out_dir)], capsys
    )
    assert code == 0 and "vocab 1024" in out
    assert (out_dir / "tokenizer.json").is_file()
    tok = load_tokenizer(out_dir)
    for book in books:  # trained on the books: each one round-trips exactly
        assert tok.decode(tok.encode(book)) == book

    code, out, _ = run(
        ["tokenizer", "encode", "--tokenizer", str(out_dir), "--text", "Olá, mundo! 🙂"], capsys
    )
    ids = [int(i) for i in out.split()]
    assert code == 0 and ids == tok.encode("Olá, mundo! 🙂")
    code, out, _ = run(
        ["tokenizer", "decode", "--tokenizer", str(out_dir), "--ids", ",".join(map(str, ids))], capsys
    )
    assert code == 0 and out == "Olá, mundo! 🙂\n"
    text_file = tmp_path / "t.txt"
    text_file.write_text("Capitu\n")
    code, out, _ = run(["tokenizer", "encode", "--tokenizer", str(out_dir), "--file", str(text_file)], capsys)
    assert [int(i) for i in out.split()] == tok.encode("Capitu\n")

    code, out, _ = run(["tokenizer", "eval", "--tokenizer", str(out_dir), "--data", str(dataset)], capsys)
    assert code == 0 and "bytes/token" in out and "byte fallback" in out


def test_gpt4_pattern(dataset: Path, tmp_path: Path, capsys) -> None:
    from fornalha.tokenizer.bpe import LLAMA3_SPLIT_PATTERN

    args = ["tokenizer", "train", "--data", str(dataset), "--vocab-size", "300", "--pattern", "gpt4"]
    code, _, _ = run([*args, "--max-bytes", "100000", "--out", str(tmp_path)], capsys)
    tok = load_tokenizer(tmp_path)
    assert code == 0 and tok.pattern == LLAMA3_SPLIT_PATTERN


def test_char_kind(dataset: Path, tmp_path: Path, capsys) -> None:
    code, _, _ = run(
        [
            "tokenizer",
            "train",
            "--data",
            str(dataset),
            "--kind",
            "char",
            "--max-bytes",
            "200000",
            "--out",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0 and load_tokenizer(tmp_path).kind == "char"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tokenizer", "train", "--data", "/nonexistent", "--out", "x"], "not found"),
        (["tokenizer", "train", "--data", "{ds}", "--vocab-size", "100", "--out", "{tmp}"], "at least 263"),
        (
            ["tokenizer", "train", "--data", "{ds}", "--kind", "wordpiece", "--out", "{tmp}"],
            "unknown tokenizer kind",
        ),
        (["tokenizer", "train", "--data", "{ds}", "--pattern", "(unclosed", "--out", "{tmp}"], "valid regex"),
        (["tokenizer", "encode", "--tokenizer", "/nonexistent", "--text", "a"], "not found"),
        (["tokenizer", "encode", "--tokenizer", "{tmp}"], "exactly one of"),
        (["tokenizer", "encode", "--tokenizer", "{tmp}", "--text", "a"], "not a tokenizer folder"),
        (["tokenizer", "decode", "--tokenizer", "{tmp}", "--ids", "1 x"], "non-negative integers"),
        (["tokenizer", "eval", "--tokenizer", "/nonexistent", "--data", "{ds}"], "not found"),
    ],
)
def test_cli_errors(args: list[str], message: str, dataset: Path, tmp_path: Path, capsys) -> None:
    args = [a.format(ds=dataset, tmp=tmp_path) for a in args]
    code, _, err = run(args, capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_decode_out_of_range(dataset: Path, tmp_path: Path, capsys) -> None:
    run(["tokenizer", "train", "--data", str(dataset), "--kind", "char", "--out", str(tmp_path)], capsys)
    code, _, err = run(["tokenizer", "decode", "--tokenizer", str(tmp_path), "--ids", "99999"], capsys)
    assert code == 2 and "out of range" in err


def test_measure_and_baselines(books: list[str], dataset: Path, tmp_path: Path) -> None:
    from fornalha.tokenizer import CharTokenizer

    char = CharTokenizer.train(books)
    counts = measure(char, books[:2])
    assert counts["tokens"] == counts["chars"] == sum(len(b) for b in books[:2])
    assert counts["bytes"] == sum(len(b.encode()) for b in books[:2])
    rows = {r["name"]: r for r in compare(counts, "char")}
    assert rows["byte fallback"]["bytes_per_token"] == 1.0
    assert rows["char level"]["chars_per_token"] == 1.0 == rows["char"]["chars_per_token"]
    char.save(tmp_path)
    report = evaluate_tokenizer(tmp_path, dataset, split="val", max_bytes=10_000)
    assert report["bytes"] == 10_000 and report["documents"] == 1
