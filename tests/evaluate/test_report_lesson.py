"""report.html as a lesson: the first screen says in words what was built and how good it is (beside
raw bytes and a unigram model of the same tokens), each stage shows an example from the user's own data,
and the raw tables come last with human labels. Checked in Chromium as a learner sees it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from fornalha.data.dataset import iter_texts
from fornalha.data.prepare import PrepareConfig, SourceEntry, prepare
from fornalha.evaluate.report import human_value, unigram_bits_per_byte, write_report
from fornalha.tokenizer.char import CharTokenizer
from fornalha.tokenizer.encode_dataset import tokenize_dataset

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def pipeline_run(tmp_path, shared_data) -> tuple[Path, Path]:
    """A run folder laid out like `fornalha pipeline` leaves it, on real text (TinyShakespeare)."""
    play = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"scene{i}.txt").write_text(play[i * 10_000 : (i + 1) * 10_000], encoding="utf-8")
    (corpus / "zz-note.txt").write_text("Too short to keep.", encoding="utf-8")
    run = tmp_path / "run"
    dataset = run / "dataset"
    cfg = PrepareConfig(sources=[SourceEntry(source=str(corpus))])
    prepare(cfg, dataset, workers=1, progress=False)
    tok = CharTokenizer.train(list(iter_texts(dataset, "train")) + list(iter_texts(dataset, "val")))
    tok.save(run / "tokenizer")
    tokenize_dataset(dataset, run / "tokenizer", run / "shards", progress=False)
    records = [{"step": s, "train_loss": 4.2 - s / 100, "elapsed_s": s * 0.9} for s in range(0, 200, 10)]
    records += [{"step": s, "val_loss": 4.3 - s / 110, "val_bpb": 2.5 - s / 400} for s in range(0, 200, 50)]
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in sorted(records, key=lambda r: r["step"]))
    )
    summary = {"status": "time_budget", "steps": 190, "tokens_seen": 778_240, "wall_time_s": 171.3,
               "parameters": 1_066_368, "peak_flops": 357_505_297_882.0, "mfu": 0.0123, "device": "cpu",
               "best": {"val_loss": 2.6}, "best_val_bpb": 2.1}  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    best = run / "checkpoints" / "best"
    best.mkdir(parents=True)
    model = {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "vocab_size": tok.vocab_size}
    (best / "meta.json").write_text(json.dumps({"format": "fornalha-checkpoint", "model_config": model}))
    evaluation = {"loss": {"split": "val", "loss": 1.4, "ppl": 4.06, "bpb": 2.034, "tokens": 3000, "bytes": 3000},
                  "samples": [{"prompt": "ROMEO:", "text": " I will not stay."}, {"prompt": "", "text": "free"}]}  # fmt: skip
    (run / "eval.json").write_text(json.dumps(evaluation))
    return run, dataset


def test_unigram_reference_matches_a_count_by_hand(pipeline_run):
    run, dataset = pipeline_run
    from fornalha.tokenizer import load_tokenizer

    tok = load_tokenizer(run / "tokenizer")
    train = [i for t in iter_texts(dataset, "train") for i in [tok.bos_id, *tok.encode(t)]]
    val_docs = list(iter_texts(dataset, "val"))
    val = [i for t in val_docs for i in [tok.bos_id, *tok.encode(t)]]
    counts = np.bincount(train, minlength=tok.vocab_size) + 1.0
    bits = -sum(math.log2(counts[i] / counts.sum()) for i in val)
    val_bytes = sum(len(t.encode("utf-8")) for t in val_docs)
    assert unigram_bits_per_byte(run / "shards") == pytest.approx(bits / val_bytes, rel=1e-9)
    assert 3.0 < bits / val_bytes < 5.0  # characters of English: below 5 bits each, far below 8


def test_first_screen_speaks_in_words_and_raw_tables_come_last(pipeline_run):
    run, dataset = pipeline_run
    page = write_report(run, dataset_dir=dataset).read_text()
    first = page[page.index('<section id="summary">') : page.index("<nav>")]
    unigram = unigram_bits_per_byte(run / "shards")
    for words in ("1.07 million parameters", "4 layers, 4 attention heads, width 128", "context 128 tokens",
                  "6 documents", "2 min 51 s on cpu", "190 steps", "stopped when its time budget ran out",
                  "2.034 bits per byte", "raw bytes (no model)", "unigram model of the same tokens",
                  f"{unigram:.2f}", f"{unigram / 2.034:.1f}× better", 'class="plot"'):  # fmt: skip
        assert words in first, words
    # each stage: two sentences and an example from the user's own data
    data = page[page.index('<section id="data">') : page.index('<section id="tokenizer">')]
    assert "zz-note.txt" in data and "too short" in data and "Too short to keep." in data
    tok_section = page[page.index('<section id="tokenizer">') : page.index('<section id="loss">')]
    sentence = re.search(r"split into (\d+) tokens</div>\s*<div>(.*?)</div>", tok_section)
    assert sentence is not None
    assert int(sentence.group(1)) == len(sentence.group(2).replace("&#39;", "'"))  # char tokenizer
    samples = page[page.index('<section id="samples">') : page.index('<section id="details">')]
    assert "ROMEO:" in samples and "I will not stay." in samples
    # raw tables last, with human labels and numbers a person can read
    assert page.index('<section id="details">') > page.index('<section id="samples">')
    labels = re.findall(r"<tr><td>([^<]*)</td>", page[page.index('<section id="details">') :])
    labels += re.findall(r"<th>([^<]*)</th>", page[page.index('<section id="details">') :])
    assert labels and not [x for x in labels if re.fullmatch(r"[a-z]+(_[a-z]+)+", x)], labels
    assert "357,505,297,882" not in page and "358 billion" in page and "1.2 %" in page
    assert human_value("wall_time_s", 171.3) == "2 min 51 s"


def test_a_learner_sees_the_lesson_in_chromium(pipeline_run, tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    run, dataset = pipeline_run
    html = write_report(run, dataset_dir=dataset)
    shot = Path(__file__).resolve().parents[2] / "tmp" / "artifacts" / "report" / "report-first-screen.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(html.as_uri())
        # the first screen holds the words, the references and the loss curve
        for selector in ("dl.facts", ".refs", "img.plot"):
            box = page.locator(selector).bounding_box()
            assert box is not None and box["y"] + box["height"] / 2 < 800, selector
        assert page.evaluate("document.querySelector('img.plot').naturalWidth") > 100  # the PNG decodes
        page.screenshot(path=str(shot))
        browser.close()
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10
