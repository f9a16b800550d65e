"""report.html and the overfitting verdict."""

from __future__ import annotations

import base64
import io
import json
import re

import matplotlib.image
import pytest

from fornalha.errors import FornalhaError
from fornalha.evaluate.report import eval_table_rows, overfitting_verdict, plot_losses, write_report


def u_shaped(n_steps: int = 500, best: int = 300) -> list[dict]:
    """Train loss falls throughout; validation falls until `best`, then rises."""
    records = []
    for s in range(0, n_steps, 10):
        r = {"step": s, "train_loss": 4.0 - s / 200}
        if s % 50 == 0:
            r["val_loss"] = 4.0 - s / 250 if s <= best else 4.0 - best / 250 + (s - best) / 500
        records.append(r)
    return records


def test_verdict_overfitting_from_the_best_step():
    v = overfitting_verdict(u_shaped())
    assert v.overfit_from == 300 and v.best_step == 300
    assert v.verdict.startswith("overfitting from step 300")
    assert v.best_val_loss == pytest.approx(2.8)
    assert v.final_val_loss == pytest.approx(3.1)
    # final gap: val at step 450 minus train averaged over the last 5 logs up to 450 (410..450)
    assert v.final_gap == pytest.approx(3.1 - (4.0 - 430 / 200))


def test_verdict_no_overfitting():
    falling = [{"step": s, "train_loss": 4 - s / 100, "val_loss": 4.2 - s / 120} for s in range(0, 200, 20)]
    v = overfitting_verdict(falling)
    assert v.overfit_from is None and v.best_step == 180
    assert v.verdict.startswith("no overfitting detected")
    # validation rises but so does training: instability, not overfitting
    unstable = [{"step": s, "train_loss": 2 + s / 100, "val_loss": 2.2 + s / 100} for s in range(0, 200, 20)]
    v = overfitting_verdict(unstable)
    assert v.overfit_from is None and "did not fall" in v.verdict
    # a wobble within the tolerance is not overfitting
    wobble = [
        {"step": s, "train_loss": 3 - s / 1000, "val_loss": 3.0 + (0.001 if s == 180 else 0)}
        for s in range(0, 200, 20)
    ]
    assert overfitting_verdict(wobble).overfit_from is None
    assert "cannot judge" in overfitting_verdict([{"step": 1, "train_loss": 3.0}]).verdict


def make_run_dir(tmp_path, with_png: bool = False):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in u_shaped()) + '{"step": 5'
    )  # torn line
    (run / "summary.json").write_text(
        json.dumps({"best_step": 300, "best_val_loss": 2.8, "status": "finished"})
    )
    (run / "config.yaml").write_text("model:\n  n_layer: 2\ntrain:\n  lr: 0.003  # <b>not bold</b>\n")
    if with_png:
        (run / "plots").mkdir()
        (run / "plots" / "loss.png").write_bytes(plot_losses(u_shaped()))
    return run


EVAL = {
    "checkpoint": "run/checkpoints/best",
    "step": 300,
    "loss": {"split": "val", "loss": 2.5, "ppl": 12.18, "bpb": 1.75, "tokens": 1000, "bytes": 4000},
    "multiple_choice": {
        "hellaswag": {
            "n": 100,
            "accuracy": 0.27,
            "stderr": 0.044,
            "chance": 0.25,
            "acc_norm": 0.26,
            "acc_norm_stderr": 0.044,
        },
        "blimp": {
            "n": 200,
            "accuracy": 0.6,
            "stderr": 0.035,
            "chance": 0.5,
            "groups": {"island_effects": {"n": 3, "accuracy": 1.0}},
        },
    },
}


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_has_every_section_and_a_valid_embedded_plot(tmp_path):
    run = make_run_dir(tmp_path)
    data = tmp_path / "ds"
    data.mkdir()
    (data / "report.json").write_text(
        json.dumps(
            {
                "sources": {
                    "machado.txt": {
                        "docs_in": 10,
                        "bytes_in": 1000,
                        "docs_out": 8,
                        "bytes_out": 900,
                        "dropped": {"too short": 1},
                        "skipped": {"binary": 1},
                    }
                },
                "splits": {"train": {"documents": 7, "bytes": 800}, "val": {"documents": 1, "bytes": 100}},
                "reasons": {"dropped: too short": 1, "skipped: binary": 1},
                "seconds": 1.5,
                "future_table": {"a": {"x": 1}},
            }
        )
    )
    samples = [{"prompt": "Era", "text": " uma vez <script>alert(1)</script>"}, "plain sample"]
    out = write_report(
        run, dataset_dir=data, eval_results=EVAL, samples=samples, tokenizer_stats={"merges": 4089}
    )
    assert out == run / "report.html"
    page = out.read_text()
    for sid in ("summary", "data", "tokenizer", "loss", "overfitting", "evaluation", "samples", "config"):
        assert f'<section id="{sid}">' in page
    assert "overfitting from step 300" in page
    assert "machado.txt" in page and "dropped: too short" in page and "documents kept" in page
    assert (
        "90.0 %" in page and "<h3>Splits</h3>" in page and "Future table" in page
    )  # bytes kept; unknown keys
    assert "bits per byte (val)" in page and "1.7500" in page and "27.0 % ± 4.4" in page and "25 %" in page
    assert "island_effects" in page and "merges" in page
    assert "bytes per token (eval text)" in page  # 4000 bytes / 1000 tokens
    # escaping: text from data never becomes markup
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;not bold&lt;/b&gt;" in page
    # self-contained: no external assets, no scripts
    assert not re.search(r"(src|href)=\"(?!data:|#)", page)
    assert "http://" not in page and "https://" not in page
    (png,) = embedded_pngs(page)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(io.BytesIO(png), format="png")
    assert img.shape[0] > 100 and img.shape[1] > 100


def test_report_embeds_the_runs_own_plot_and_reads_eval_json(tmp_path):
    run = make_run_dir(tmp_path, with_png=True)
    (run / "eval.json").write_text(
        json.dumps({**EVAL, "samples": [{"prompt": "", "text": "from eval.json"}]})
    )
    page = write_report(run, out_html=tmp_path / "elsewhere" / "r.html").read_text()
    assert embedded_pngs(page) == [(run / "plots" / "loss.png").read_bytes()]
    assert "from plots/loss.png" in page and "from eval.json" in page and "12.18" in page


def test_report_takes_the_last_samples_written_by_training(tmp_path):
    run = make_run_dir(tmp_path)
    lines = [
        {"step": 100, "text": "early sample"},
        {"step": 200, "text": "late one"},
        {"step": 200, "text": "late two"},
    ]
    (run / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    page = write_report(run).read_text()
    assert "late one" in page and "late two" in page and "early sample" not in page


def test_report_of_a_bare_run_and_missing_run(tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    page = write_report(run).read_text()
    assert "No summary.json" in page and "Not evaluated yet" in page and "cannot judge" in page
    assert embedded_pngs(page) == []
    with pytest.raises(FornalhaError, match="not found"):
        write_report(tmp_path / "nope")


def test_eval_table_rows():
    rows = eval_table_rows(EVAL)
    assert ("perplexity (val)", "12.18", "") in rows
    assert ("blimp accuracy (n=200)", "60.0 % ± 3.5", "50 %") in rows
    assert ("hellaswag acc_norm (n=100)", "26.0 % ± 4.4", "25 %") in rows
    assert eval_table_rows(None) == []
