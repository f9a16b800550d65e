"""One self-contained `report.html` per run: everything a person wants to see after training.

Sections, top to bottom: run summary, data report, tokenizer statistics, loss curves, overfitting
verdict, evaluation table, samples, and the run's configuration. The page needs nothing but
itself: the loss plot is embedded as a base64 PNG, the CSS is inline, there are no scripts and
no external links, so it can be mailed, archived or opened offline.

The HTML comes from the Jinja2 template ``templates/report.html`` with autoescaping on, so text
from the data (samples, source names) cannot break the page.

Inputs are read from the run folder (summary.json, metrics.jsonl, config.yaml, plots/loss.png,
eval.json, tokenizer/) and, when given, from a prepared dataset folder (report.json,
manifest.json). Everything is optional: a section whose input is missing says so.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fornalha.errors import FornalhaError
from fornalha.jsonl import read_log

# --------------------------------------------------------------------------------------------
# Reading the run folder
# --------------------------------------------------------------------------------------------


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of RUN_DIR/metrics.jsonl (skipping a torn last line from a killed run)."""
    return read_log(Path(run_dir) / "metrics.jsonl")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _num(x: Any) -> float | None:
    """x as a finite float, or None."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


# --------------------------------------------------------------------------------------------
# Overfitting verdict
# --------------------------------------------------------------------------------------------


@dataclass
class OverfitVerdict:
    """What metrics.jsonl says about generalisation.

    best_step / best_val_loss: the evaluation with the lowest validation loss.
    final_gap: val − train at the last evaluation (train loss smoothed over recent logs).
    overfit_from: the step after which validation loss rose while training loss fell, or None.
    """

    verdict: str
    best_step: int | None = None
    best_val_loss: float | None = None
    final_val_loss: float | None = None
    final_train_loss: float | None = None
    final_gap: float | None = None
    overfit_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _smoothed_train(records: list[dict[str, Any]], step: int, window: int = 5) -> float | None:
    """Mean train_loss of the last ``window`` logged records at or before ``step`` (train loss
    is noisy from batch to batch; a short average makes before/after comparisons meaningful)."""
    vals = [
        _num(r.get("train_loss"))
        for r in records
        if _num(r.get("train_loss")) is not None and _num(r.get("step")) is not None and r["step"] <= step
    ]
    vals = [v for v in vals if v is not None][-window:]
    return sum(vals) / len(vals) if vals else None


def overfitting_verdict(records: Sequence[dict[str, Any]], tolerance: float = 0.01) -> OverfitVerdict:
    """Judge overfitting from training records ({step, train_loss, val_loss, …}).

    Overfitting means the model memorises its training text instead of learning what carries
    over: training loss keeps falling while validation loss turns up. The rule here:

    1. the best step is the evaluation with the lowest val_loss;
    2. if the last evaluation's val_loss is more than ``tolerance`` (relative, default 1 %) above
       the best, and the smoothed train_loss at the last evaluation is below the one at the best
       step, the verdict is "overfitting from step <best step>";
    3. otherwise "no overfitting detected". The final gap val − train is reported either way (a
       large gap with a flat validation loss is memorisation that has not yet hurt).
    """
    records = [r for r in records if _num(r.get("step")) is not None]
    evals = [r for r in records if _num(r.get("val_loss")) is not None]
    if not evals:
        return OverfitVerdict(verdict="no validation losses logged: cannot judge overfitting")
    best = min(evals, key=lambda r: (r["val_loss"], r["step"]))
    last = evals[-1]
    train_best = _smoothed_train(records, best["step"])
    train_last = _smoothed_train(records, last["step"])
    gap = None if train_last is None else last["val_loss"] - train_last
    rose = last["step"] > best["step"] and last["val_loss"] > best["val_loss"] * (1.0 + tolerance)
    fell = train_best is not None and train_last is not None and train_last < train_best
    overfit = rose and fell
    if overfit:
        text = (
            f"overfitting from step {best['step']}: validation loss rose from {best['val_loss']:.4f} to "
            f"{last['val_loss']:.4f} while training loss fell from {train_best:.4f} to {train_last:.4f}; "
            f"the best checkpoint (step {best['step']}) is the one to use"
        )
    elif rose:
        text = (
            f"no overfitting detected: validation loss rose after step {best['step']}, "
            "but training loss did not fall (an unstable or too-high learning rate?)"
        )
    else:
        text = f"no overfitting detected: validation loss is lowest at step {best['step']}"
    return OverfitVerdict(
        verdict=text,
        best_step=int(best["step"]),
        best_val_loss=float(best["val_loss"]),
        final_val_loss=float(last["val_loss"]),
        final_train_loss=train_last,
        final_gap=gap,
        overfit_from=int(best["step"]) if overfit else None,
    )


# --------------------------------------------------------------------------------------------
# Loss curves
# --------------------------------------------------------------------------------------------


def plot_losses(records: Sequence[dict[str, Any]], verdict: OverfitVerdict | None = None) -> bytes | None:
    """A PNG of train and validation loss against step, drawn with matplotlib's Agg backend (no
    display needed); the best step is marked and an overfitting region shaded. None if nothing
    was logged."""
    train = [
        (r["step"], r["train_loss"]) for r in records if _num(r.get("train_loss")) is not None and "step" in r
    ]
    val = [(r["step"], r["val_loss"]) for r in records if _num(r.get("val_loss")) is not None and "step" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#4c72b0", linewidth=1.2, alpha=0.85)
    if val:
        ax.plot(*zip(*val), label="validation loss", color="#dd8452", marker="o", markersize=3, linewidth=1.6)
    if verdict is not None and verdict.best_step is not None:
        ax.axvline(
            verdict.best_step,
            color="#55a868",
            linestyle="--",
            linewidth=1,
            label=f"best step {verdict.best_step}",
        )
        if verdict.overfit_from is not None:
            end = max(s for s, _ in (val or train))
            ax.axvspan(verdict.overfit_from, end, color="#c44e52", alpha=0.12, label="overfitting")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _data_uri_png(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --------------------------------------------------------------------------------------------
# Turning JSON into tables
# --------------------------------------------------------------------------------------------


def fmt(x: Any) -> str:
    """A short human form of a number (thousands separators, 4 significant decimals)."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x == int(x) and abs(x) < 1e15:
            return f"{int(x):,}"
        if abs(x) >= 1000:
            return f"{x:,.1f}"
        return f"{x:.4g}"
    if x is None:
        return "–"
    if isinstance(x, (dict, list)):
        return json.dumps(x, ensure_ascii=False)
    return str(x)


def dict_table(d: dict[str, Any]) -> dict[str, Any]:
    """{columns, rows} for a mapping of name -> record (a table with one row per name) or of
    name -> scalar (a two-column table). Nested values are shown as JSON."""
    if d and all(isinstance(v, dict) for v in d.values()):
        columns: list[str] = []
        for v in d.values():
            for k in v:
                if k not in columns:
                    columns.append(k)
        rows = [[name, *(fmt(v.get(c)) for c in columns)] for name, v in d.items()]
        return {"columns": ["", *columns], "rows": rows}
    return {"columns": ["", "value"], "rows": [[k, fmt(v)] for k, v in d.items()]}


_SKIP_KEYS = {
    "out_dir",
    "cache_key",
    "notes",
    "config",
    "format",
    "version",
    "created",
    "shards",
    "fingerprint",
}


def _drop_keys(d: dict[str, Any]) -> dict[str, Any]:
    """A record without bookkeeping fields (shard lists, hashes) that make tables unreadable."""
    return {k: v for k, v in d.items() if k not in _SKIP_KEYS}


def data_sections(dataset_dir: str | Path | None) -> list[dict[str, Any]]:
    """Tables for the data report, from DATASET_DIR/report.json and manifest.json.

    Per source: documents and bytes in and out, the share of bytes kept, documents dropped;
    then documents dropped per reason, the splits, PII replacements and totals. Keys this does
    not know are shown generically (a mapping of records becomes a table), so a newer report
    format still shows up.
    """
    if dataset_dir is None:
        return []
    dataset_dir = Path(dataset_dir)
    report = _read_json(dataset_dir / "report.json")
    manifest = _read_json(dataset_dir / "manifest.json")
    report = report if isinstance(report, dict) else {}
    manifest = manifest if isinstance(manifest, dict) else {}
    out: list[dict[str, Any]] = []

    sources = report.get("sources")
    if isinstance(sources, dict) and sources:
        rows = {}
        for name, st in sources.items():
            if not isinstance(st, dict):
                continue
            row = {k: st.get(k) for k in ("docs_in", "docs_out", "bytes_in", "bytes_out")}
            if _num(st.get("bytes_in")) and _num(st.get("bytes_out")) is not None:
                row["bytes kept"] = f"{100 * st['bytes_out'] / st['bytes_in']:.1f} %"
            dropped = [v for key in ("dropped", "skipped") for v in (st.get(key) or {}).values()]
            row["docs dropped"] = sum(v for v in dropped if isinstance(v, int))
            rows[name] = row
        out.append({"title": "Sources", **dict_table(rows)})
    reasons = report.get("reasons")
    if isinstance(reasons, dict):
        title = "Documents dropped, per reason"
        out.append(
            {"title": title, **dict_table(reasons)}
            if reasons
            else {"title": title, "columns": [], "rows": []}
        )
    splits = report.get("splits") or manifest.get("splits")
    if isinstance(splits, dict) and splits:
        out.append(
            {
                "title": "Splits",
                **dict_table({k: _drop_keys(v) if isinstance(v, dict) else v for k, v in splits.items()}),
            }
        )
    if isinstance(manifest.get("counts"), dict):
        out.append({"title": "Totals", **dict_table(manifest["counts"])})
    if isinstance(report.get("pii_replaced"), dict) and report["pii_replaced"]:
        out.append({"title": "Personal data replaced", **dict_table(report["pii_replaced"])})
    if isinstance(manifest.get("sources"), list) and manifest["sources"]:
        specs = {
            str(s.get("spec", i)): _drop_keys(s)
            for i, s in enumerate(manifest["sources"])
            if isinstance(s, dict)
        }
        out.append({"title": "Source specifications", **dict_table(specs)})

    known = {"sources", "reasons", "splits", "pii_replaced"}
    scalars = {k: v for k, v in report.items() if not isinstance(v, (dict, list)) and k not in _SKIP_KEYS}
    for key, value in report.items():  # anything else the data stage reports
        if key not in known and key not in _SKIP_KEYS and isinstance(value, dict) and value:
            out.append({"title": key, **dict_table(value)})
    if scalars:
        out.append({"title": "Preparation", **dict_table(scalars)})
    return out


def tokenizer_statistics(
    run_dir: Path, given: dict[str, Any] | None, eval_results: dict[str, Any] | None
) -> dict:
    """Vocabulary size, kind and bytes per token (measured on the evaluated text when known)."""
    stats: dict[str, Any] = {}
    meta = _read_json(run_dir / "tokenizer" / "fornalha_tokenizer.json")
    if isinstance(meta, dict):
        for k in ("kind", "vocab_size"):
            if k in meta:
                stats[k] = meta[k]
        if isinstance(meta.get("special_tokens"), (dict, list)):
            stats["special tokens"] = len(meta["special_tokens"])
    loss = (eval_results or {}).get("loss") or {}
    if loss.get("tokens") and loss.get("bytes"):
        stats["bytes per token (eval text)"] = loss["bytes"] / loss["tokens"]
        stats["eval tokens"] = loss["tokens"]
        stats["eval bytes"] = loss["bytes"]
    stats.update(given or {})
    return stats


def eval_table_rows(eval_results: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    """(metric, value, chance level) rows from an eval.json object; shared by the CLI and report."""
    if not eval_results:
        return []
    rows: list[tuple[str, str, str]] = []
    loss = eval_results.get("loss")
    if loss:
        where = f" ({loss.get('split')})" if loss.get("split") else ""
        rows.append((f"loss{where}, nats/token", f"{loss['loss']:.4f}", ""))
        rows.append((f"perplexity{where}", f"{loss['ppl']:.2f}", ""))
        if loss.get("bpb") is not None:
            rows.append((f"bits per byte{where}", f"{loss['bpb']:.4f}", "8.0 (raw bytes)"))
        rows.append(("tokens scored", f"{loss['tokens']:,}", ""))
    for task, r in (eval_results.get("multiple_choice") or {}).items():
        rows.append(
            (
                f"{task} accuracy (n={r['n']})",
                f"{100 * r['accuracy']:.1f} % ± {100 * r['stderr']:.1f}",
                f"{100 * r['chance']:.0f} %",
            )
        )
        if r.get("acc_norm") is not None:
            rows.append(
                (
                    f"{task} acc_norm (n={r['n']})",
                    f"{100 * r['acc_norm']:.1f} % ± {100 * r['acc_norm_stderr']:.1f}",
                    f"{100 * r['chance']:.0f} %",
                )
            )
    return rows


def _groups_table(groups: dict[str, dict[str, Any]] | None) -> dict[str, Any] | None:
    """Per-category accuracies (BLiMP phenomena) as a table with percentages."""
    if not groups:
        return None
    rows = {k: {"n": g["n"], "accuracy": f"{100 * g['accuracy']:.0f} %"} for k, g in groups.items()}
    return dict_table(rows)


def _normalise_samples(samples: Any) -> list[dict[str, str]]:
    """Samples as [{"prompt", "text"}] from strings, dicts or (prompt, text) pairs."""
    out = []
    for s in samples or []:
        if isinstance(s, str):
            out.append({"prompt": "", "text": s})
        elif isinstance(s, dict):
            out.append(
                {
                    "prompt": str(s.get("prompt", "")),
                    "text": str(s.get("text", s.get("completion", s.get("sample", "")))),
                }
            )
        elif isinstance(s, (list, tuple)) and len(s) == 2:
            out.append({"prompt": str(s[0]), "text": str(s[1])})
    return out


def _samples_from_run(run_dir: Path, records: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The samples of the last evaluation that wrote any: RUN_DIR/samples.jsonl ({step, text}
    per line, appended at each evaluation by training), else a "samples" key in metrics.jsonl."""
    path = run_dir / "samples.jsonl"
    if path.is_file():
        rows = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "text" in obj:
                rows.append(obj)
        if rows:
            last = rows[-1].get("step")
            return _normalise_samples([r for r in rows if r.get("step") == last])
    for r in reversed(records):
        if r.get("samples"):
            return _normalise_samples(r["samples"])
    return []


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def write_report(
    run_dir: str | Path,
    out_html: str | Path | None = None,
    dataset_dir: str | Path | None = None,
    tokenizer_stats: dict[str, Any] | None = None,
    eval_results: dict[str, Any] | None = None,
    samples: Sequence[Any] | None = None,
) -> Path:
    """Write RUN_DIR/report.html (or ``out_html``) and return its path.

    eval_results: the eval.json object (read from RUN_DIR/eval.json when None); samples: strings,
    {"prompt", "text"} dicts or (prompt, text) pairs (default: those in eval.json, else the
    last evaluation's in RUN_DIR/samples.jsonl); tokenizer_stats: extra tokenizer numbers to show;
    dataset_dir: the prepared dataset, for the data report.
    """
    import jinja2

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FornalhaError(f"run folder not found: {run_dir}")
    out = Path(out_html) if out_html is not None else run_dir / "report.html"

    records = read_metrics(run_dir)
    summary = _read_json(run_dir / "summary.json")
    if eval_results is None:
        eval_results = _read_json(run_dir / "eval.json")
    verdict = overfitting_verdict(records)

    png_path = run_dir / "plots" / "loss.png"
    png = png_path.read_bytes() if png_path.is_file() else plot_losses(records, verdict)
    plot_note = "from plots/loss.png" if png_path.is_file() else "drawn from metrics.jsonl"

    if samples is None:
        samples = (eval_results or {}).get("samples") or _samples_from_run(run_dir, records)
    config_text = None
    if (run_dir / "config.yaml").is_file():
        config_text = (run_dir / "config.yaml").read_text(encoding="utf-8", errors="replace")

    mc = (eval_results or {}).get("multiple_choice") or {}
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fornalha.evaluate", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    page = env.get_template("report.html").render(
        title=f"fornalha run report: {run_dir.resolve().name}",
        run_dir=str(run_dir.resolve()),
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
        summary=dict_table(summary) if isinstance(summary, dict) and summary else None,
        data_tables=data_sections(dataset_dir),
        dataset_dir=str(dataset_dir) if dataset_dir is not None else None,
        tokenizer=dict_table(tokenizer_statistics(run_dir, tokenizer_stats, eval_results)),
        plot=_data_uri_png(png) if png else None,
        plot_note=plot_note,
        verdict=verdict,
        overfitting=verdict.overfit_from is not None,
        fmt=fmt,
        eval_rows=eval_table_rows(eval_results),
        eval_meta={k: eval_results.get(k) for k in ("checkpoint", "step")} if eval_results else {},
        blimp_groups=_groups_table(mc.get("blimp", {}).get("groups")),
        samples=_normalise_samples(samples),
        config_text=config_text,
        n_records=len(records),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
