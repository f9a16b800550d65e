"""One self-contained `report.html` per run, written to be read like a lesson.

The first screen says in words what was built and how good it is: model size, data, training time,
validation bits per byte beside two references measured on the same data (raw bytes: 8 bits; a
unigram model that only knows how often each token occurs), and the loss curve. Then one section per
stage of the pipeline (data, tokenizer, training, overfitting, evaluation, samples), each explained in
two sentences with a concrete example from the user's own data: a dropped document and why, a
sentence split into tokens, a sample beside its prompt. The raw tables, with human labels, come last.

The page needs nothing but itself: the loss plot is embedded as a base64 PNG, the CSS is inline,
there are no scripts and no external links, so it can be mailed, archived or opened offline.

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

import numpy as np

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


LABELS = {
    "docs_in": "documents read",
    "docs_out": "documents kept",
    "bytes_in": "bytes read",
    "bytes_out": "bytes kept",
    "documents_in": "documents read",
    "documents_out": "documents kept",
    "mojibake_repaired": "documents with repaired encoding",
    "throughput_mb_s": "throughput (MB/s)",
    "seconds": "time",
    "wall_time_s": "training time",
    "elapsed_s": "time",
    "tokens_seen": "tokens seen",
    "best_step": "best step",
    "best_val_loss": "best validation loss (nats/token)",
    "best_val_bpb": "best validation bits per byte",
    "best_val_ppl": "best validation perplexity",
    "best_metric": "best checkpoint chosen by",
    "final_val_loss": "final validation loss (nats/token)",
    "final_train_loss": "final training loss (nats/token)",
    "final_eval_step": "last evaluated step",
    "val_tokens_per_eval": "validation tokens per evaluation",
    "overfitting_steps": "steps flagged as overfitting",
    "tokens_per_s": "throughput (tokens/s)",
    "mfu": "model FLOPs utilisation",
    "peak_flops": "peak compute of the device (FLOP/s)",
    "world_size": "processes",
    "run_dir": "run folder",
    "best_checkpoint": "best checkpoint",
    "val_loss": "validation loss (nats/token)",
    "val_bpb": "validation bits per byte",
    "vocab_size": "vocabulary size",
    "kind": "kind",
    "pii_replaced": "personal data replaced",
    "dtype": "number format",
    "status": "how training ended",
}
_STATUS = {
    "time_budget": "time budget ran out",
    "finished": "all planned steps done",
    "max_steps": "all planned steps done",
}


def human_label(key: Any) -> str:
    """A column or row name for people: known keys get words, others lose their underscores."""
    key = str(key)
    if key in LABELS:
        return LABELS[key]
    return key.replace("_", " ") if "_" in key and " " not in key else key


def human_value(key: Any, x: Any) -> str:
    """`fmt`, plus durations for time keys, a percentage for MFU and words for very large numbers."""
    key = str(key)
    if key == "status" and isinstance(x, str):
        return _STATUS.get(x, x.replace("_", " "))
    if isinstance(x, (list, dict)) and not x:
        return "none"
    if _num(x) is not None and not isinstance(x, bool):
        if key in ("seconds", "wall_time_s", "elapsed_s") or key.endswith("_seconds"):
            return duration(float(x))
        if key == "mfu":
            return f"{100 * float(x):.1f} %"
        if abs(x) >= 1e9:
            return big_number(float(x))
    return fmt(x)


def duration(seconds: float) -> str:
    """'2 min 13 s', '1 h 05 min', '4.2 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def big_number(x: float) -> str:
    """1.07 million, 357.5 billion: what a reader can say aloud."""
    for size, word in ((1e12, "trillion"), (1e9, "billion"), (1e6, "million"), (1e3, "thousand")):
        if abs(x) >= size:
            return f"{x / size:.3g} {word}"
    return fmt(x)


def dict_table(d: dict[str, Any]) -> dict[str, Any]:
    """{columns, rows} for a mapping of name -> record (a table with one row per name) or of
    name -> scalar (a two-column table), with human labels. Nested values are shown as JSON."""
    if d and all(isinstance(v, dict) for v in d.values()):
        columns: list[str] = []
        for v in d.values():
            for k in v:
                if k not in columns:
                    columns.append(k)
        rows = [[name, *(human_value(c, v.get(c)) for c in columns)] for name, v in d.items()]
        return {"columns": ["", *(human_label(c) for c in columns)], "rows": rows}
    return {"columns": ["", "value"], "rows": [[human_label(k), human_value(k, v)] for k, v in d.items()]}


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
    "best",  # summary.json repeats best_val_* in a nested record
    "examples",  # shown as the data section's example
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
                row["share of bytes kept"] = f"{100 * st['bytes_out'] / st['bytes_in']:.1f} %"
            dropped = [v for key in ("dropped", "skipped") for v in (st.get(key) or {}).values()]
            row["documents dropped"] = sum(v for v in dropped if isinstance(v, int))
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
            out.append({"title": human_label(key).capitalize(), **dict_table(value)})
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
# The lesson: references to judge the model by, and one example per stage from the user's data
# --------------------------------------------------------------------------------------------


def _shards_dir(run_dir: Path) -> Path | None:
    """The token shards the run trained on: RUN/shards (the pipeline), else config.yaml's data.path."""
    if (run_dir / "shards" / "index.json").is_file():
        return run_dir / "shards"
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        try:
            data = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data") or {}
        except yaml.YAMLError:
            return None
        path = data.get("path") if isinstance(data, dict) else None
        if isinstance(path, str) and (Path(path) / "index.json").is_file():
            return Path(path)
    return None


def unigram_bits_per_byte(shards_dir: Path, max_tokens: int = 50_000_000) -> float | None:
    """Bits per byte on the validation tokens of a unigram model of the training tokens.

    The simplest model that still learns from the data: it knows how often each token occurs in the
    training split (add-one smoothed) and nothing about order. Its cost on the validation split,
    −Σ log2 p(token) over the validation bytes, is the bar a Transformer must clear by using context.
    At most `max_tokens` training tokens are counted (the frequencies settle long before).
    """
    from fornalha.data.shards import open_shard, read_index

    try:
        index = read_index(shards_dir)
        vocab = int(index["vocab_size"])
        counts = np.zeros(vocab, dtype=np.float64)
        seen = 0
        for shard in index["splits"]["train"]["shards"]:
            ids = open_shard(shards_dir / shard["file"])[: max(0, max_tokens - seen)]
            counts += np.bincount(ids, minlength=vocab)[:vocab]
            seen += len(ids)
        log_p = np.log2(counts + 1.0) - np.log2(counts.sum() + vocab)
        bits = 0.0
        for shard in index["splits"]["val"]["shards"]:
            bits -= float(log_p[np.asarray(open_shard(shards_dir / shard["file"]), dtype=np.int64)].sum())
        val_bytes = index["splits"]["val"]["bytes"]
    except Exception:  # noqa: BLE001 - a reference is optional: a damaged shard only drops it
        return None
    return bits / val_bytes if val_bytes else None


def _model_config(run_dir: Path) -> dict[str, Any]:
    for path in (run_dir / "checkpoints" / "best" / "meta.json", run_dir / "meta.json"):
        meta = _read_json(path)
        if isinstance(meta, dict) and isinstance(meta.get("model_config"), dict):
            return meta["model_config"]
    return {}


def _first_sentence(text: str, limit: int = 90) -> str:
    """The first non-trivial line of a document, cut at a word boundary near `limit` characters."""
    for line in text.splitlines():
        line = line.strip()
        if len(line) >= 12:
            if len(line) <= limit:
                return line
            cut = line.rfind(" ", 0, limit)
            return line[: cut if cut > limit // 2 else limit]
    return text.strip()[:limit]


def tokenization_example(run_dir: Path, dataset_dir: Path | None) -> dict[str, Any] | None:
    """A sentence of the user's own validation text and the tokens the run's tokenizer cuts it into."""
    if dataset_dir is None or not (run_dir / "tokenizer").is_dir():
        return None
    from fornalha.data.dataset import iter_texts
    from fornalha.tokenizer import load_tokenizer

    try:
        text = None
        for split in ("val", "train"):
            for doc in iter_texts(dataset_dir, split):
                text = _first_sentence(doc)
                break
            if text:
                break
        if not text:
            return None
        tok = load_tokenizer(run_dir / "tokenizer")
        ids = tok.encode(text)
        pieces = [tok.decode_bytes([i]).decode("utf-8", errors="backslashreplace") for i in ids]
    except Exception:  # noqa: BLE001 - an example is optional; a missing split must not break the report
        return None
    return {
        "text": text,
        "tokens": [{"id": i, "text": p} for i, p in zip(ids, pieces)],
        "bytes_per_token": len(text.encode("utf-8")) / max(1, len(ids)),
    }


def document_example(dataset_dir: Path | None, limit: int = 280) -> str | None:
    """The beginning of the first training document, as the model reads it after cleaning."""
    if dataset_dir is None:
        return None
    from fornalha.data.dataset import iter_texts

    try:
        for doc in iter_texts(dataset_dir, "train"):
            return doc[:limit] + ("…" if len(doc) > limit else "")
    except Exception:  # noqa: BLE001 - optional
        return None
    return None


def dropped_example(dataset_dir: Path | None) -> dict[str, Any] | None:
    """One document the data stage dropped and why (report.json "examples": first one per reason)."""
    if dataset_dir is None:
        return None
    report = _read_json(Path(dataset_dir) / "report.json")
    examples = report.get("examples") if isinstance(report, dict) else None
    if not isinstance(examples, dict) or not examples:
        return None
    reason, ex = next(iter(examples.items()))
    return {"reason": reason, **ex} if isinstance(ex, dict) else None


def data_story(dataset_dir: Path | None) -> dict[str, Any] | None:
    """What the data stage did, in numbers a sentence can carry (from report.json and manifest.json)."""
    if dataset_dir is None:
        return None
    report = _read_json(dataset_dir / "report.json")
    manifest = _read_json(dataset_dir / "manifest.json")
    report = report if isinstance(report, dict) else {}
    manifest = manifest if isinstance(manifest, dict) else {}
    sources = report.get("sources") if isinstance(report.get("sources"), dict) else {}
    stats = [v for v in sources.values() if isinstance(v, dict)]
    if not stats:
        return None
    total = {k: sum(int(_num(v.get(k)) or 0) for v in stats) for k in ("docs_in", "docs_out", "bytes_in")}
    splits = report.get("splits") or manifest.get("splits") or {}
    train_b = _num((splits.get("train") or {}).get("bytes")) or 0.0
    val_b = _num((splits.get("val") or {}).get("bytes")) or 0.0
    reasons = {k: v for k, v in (report.get("reasons") or {}).items() if isinstance(v, int) and v}
    return {
        "sources": len(stats),
        "docs_in": total["docs_in"],
        "docs_out": total["docs_out"],
        "dropped": sum(reasons.values()),
        "reasons": sorted(reasons.items(), key=lambda kv: -kv[1])[:3],
        "mb_in": total["bytes_in"] / 1e6,
        "val_mb": val_b / 1e6,
        "val_share": 100 * val_b / (train_b + val_b) if train_b + val_b else 0.0,
        "pii": sum(v for v in (report.get("pii_replaced") or {}).values() if isinstance(v, int)),
    }


def lesson(
    run_dir: Path,
    summary: dict[str, Any] | None,
    records: list[dict[str, Any]],
    eval_results: dict[str, Any] | None,
    dataset_dir: Path | None,
) -> dict[str, Any]:
    """The facts of the first screen, each already in words a learner reads: what model, on what
    data, how long, and its validation bits per byte beside raw bytes and a unigram model."""
    summary = summary or {}
    cfg = _model_config(run_dir)
    facts: dict[str, Any] = {}
    params = summary.get("parameters")
    if cfg:
        shape = f"{cfg.get('n_layer')} layers, {cfg.get('n_head')} attention heads, width {cfg.get('n_embd')}"
        size = f"{big_number(params)} parameters" if _num(params) else "a model"
        facts["model"] = f"{size} ({shape}, context {cfg.get('block_size')} tokens)"
    elif _num(params):
        facts["model"] = f"{big_number(params)} parameters"

    shards = _shards_dir(run_dir)
    index = _read_json(shards / "index.json") if shards is not None else None
    manifest = _read_json(Path(dataset_dir) / "manifest.json") if dataset_dir is not None else None
    sources = [
        Path(str(s.get("spec", "?"))).name or str(s.get("spec"))
        for s in (manifest or {}).get("sources", [])
        if isinstance(s, dict)
    ]
    if isinstance(index, dict):
        train = index.get("splits", {}).get("train", {})
        what = f"{train.get('bytes', 0) / 1e6:.2f} MB of text"
        if sources:
            what += (
                " from "
                + ", ".join(sources[:3])
                + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
            )
        docs = train.get("documents")
        facts["data"] = (
            f"{what} ({fmt(train.get('tokens'))} tokens, {fmt(docs)} document{'' if docs == 1 else 's'})"
        )
    elif sources:
        facts["data"] = "text from " + ", ".join(sources)

    seconds = _num(summary.get("wall_time_s"))
    if seconds is None and records:
        seconds = _num(records[-1].get("elapsed_s"))
    if seconds is not None:
        steps = summary.get("steps") or (records[-1].get("step") if records else None)
        tokens = summary.get("tokens_seen")
        why = {
            "time_budget": "when its time budget ran out",
            "finished": "after its planned steps",
            "early_stopped": "when validation loss stopped improving",
        }.get(str(summary.get("status")), "")
        device = f" on {summary['device']}" if summary.get("device") else ""
        facts["training"] = (
            f"{duration(seconds)}{device}: {fmt(steps)} steps"
            + (f", {big_number(tokens)} tokens" if _num(tokens) else "")
            + (f", stopped {why}" if why else "")
        )

    loss = (eval_results or {}).get("loss") or {}
    bpb = _num(loss.get("bpb"))
    if bpb is None:
        bpb = _num(summary.get("best_val_bpb"))
    unigram = unigram_bits_per_byte(shards) if shards is not None else None
    references = [{"name": "raw bytes (no model)", "bpb": 8.0}]
    if unigram is not None:
        references.append({"name": "unigram model of the same tokens", "bpb": unigram})
    verdict = None
    if bpb is not None:
        best_ref = min(r["bpb"] for r in references)
        if bpb < best_ref:
            verdict = (
                f"{bpb:.2f} bits per byte: {best_ref / bpb:.1f}× better than the best simple reference, "
                "so the model uses the context to predict what comes next"
            )
        else:
            verdict = (
                f"{bpb:.2f} bits per byte: not yet better than a model that ignores context "
                "(train longer, or on more data)"
            )
    return {"facts": facts, "bpb": bpb, "references": references, "verdict": verdict}


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
    dataset = Path(dataset_dir) if dataset_dir is not None else None
    samples = _normalise_samples(samples)
    prompted = [x for x in samples if x["prompt"]]
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fornalha.evaluate", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    train_losses = [_num(r.get("train_loss")) for r in records if _num(r.get("train_loss")) is not None]
    page = env.get_template("report.html").render(
        title=f"fornalha run report: {run_dir.resolve().name}",
        run_dir=str(run_dir.resolve()),
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
        lesson=lesson(
            run_dir, summary if isinstance(summary, dict) else None, records, eval_results, dataset
        ),
        data_story=data_story(dataset),
        dropped=dropped_example(dataset),
        document=document_example(dataset) if dataset is not None else None,
        token_example=tokenization_example(run_dir, dataset),
        vocab_size=(_read_json(run_dir / "tokenizer" / "fornalha_tokenizer.json") or {}).get("vocab_size"),
        first_train_loss=train_losses[0] if train_losses else None,
        last_train_loss=train_losses[-1] if train_losses else None,
        summary=dict_table(_drop_keys(summary)) if isinstance(summary, dict) and summary else None,
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
        featured=prompted[0] if prompted else (samples[0] if samples else None),
        samples=samples,
        config_text=config_text,
        n_records=len(records),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
