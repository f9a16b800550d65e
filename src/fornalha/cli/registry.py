"""`fornalha registry register|list|show|promote|rollback|report`: model versions and the evaluation gate
(fornalha.improve.registry, fornalha.improve.gate; see docs/registry.md).

`promote` exits 0 when the challenger became the champion and 3 when the gate refused it (the
decision is recorded either way); bad input is exit 2 as everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fornalha.cli.options import GateMetricOpt, MinGainOpt, ToleranceOpt
from fornalha.errors import ConfigError
from fornalha.improve.gate import MAX_PAIRS, MAX_VAL_TOKENS, GatePolicy

REFUSED_EXIT = 3

registry_app = typer.Typer(
    help="Model versions with lineage, the aliases champion/challenger, and the evaluation gate.",
    no_args_is_help=True,
)

RegistryOpt = Annotated[
    Path, typer.Option("--registry", envvar="FORNALHA_REGISTRY", help="The registry folder.")
]
DbOpt = Annotated[
    str | None,
    typer.Option(
        "--db", envvar="FORNALHA_DB", help="SQLAlchemy URL (default: sqlite:///REGISTRY/fornalha.db)."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _open(registry: Path, db: str | None, create: bool = False):  # noqa: ANN202
    from fornalha.improve.registry import Registry

    return Registry.open(registry, db, create=create)


def _parse_metrics(pairs: list[str] | None, metrics_file: Path | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if metrics_file is not None:
        if not metrics_file.is_file():
            raise ConfigError(f"--metrics-file {metrics_file} does not exist")
        try:
            loaded = json.loads(metrics_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"--metrics-file {metrics_file} is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"--metrics-file {metrics_file} must hold a JSON object of numbers")
        out.update(
            {k: float(v) for k, v in loaded.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        )
    for item in pairs or []:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key.strip():
            raise ConfigError(f"--metric takes NAME=NUMBER, got {item!r}")
    return out


@registry_app.command("register", no_args_is_help=True)
def register_command(
    registry: RegistryOpt,
    run: Annotated[
        Path, typer.Option("--run", help="Run folder whose best checkpoint becomes the next version.")
    ],
    parent: Annotated[
        str | None,
        typer.Option("--parent", help="Parent version (default: found from the checkpoint's lineage)."),
    ] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="A file or folder the version learned from (hashed; repeatable)."),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", help="NAME=NUMBER measured elsewhere, e.g. preference_accuracy=0.61."),
    ] = None,
    metrics_file: Annotated[
        Path | None, typer.Option("--metrics-file", help="A JSON object of metric numbers to record.")
    ] = None,
    note: Annotated[str | None, typer.Option("--note", help="Free text kept with the version.")] = None,
    created_by: Annotated[
        str | None, typer.Option("--created-by", help="Who/what made it (default user@host).")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Add a run as the next version (hard links to its best checkpoint and tokenizer).

    The first version becomes the champion; later ones become the challenger.

    Example: fornalha registry register --registry models/ --run runs/dpo1 --data feedback/pairs.jsonl
    """
    metrics = _parse_metrics(metric, metrics_file)
    reg = _open(registry, db, create=True)
    try:
        rec = reg.register(
            run, parent=parent, data_paths=data, metrics=metrics, note=note, created_by=created_by
        )
        aliases = reg.data()["aliases"]
    finally:
        reg.close()
    role = [a for a, v in aliases.items() if v == rec["id"]]
    typer.echo(f"registered {run} as {rec['id']} (parent {rec['parent'] or 'none'}; {rec['files']})"
               + (f"; {', '.join(role)}" if role else ""))  # fmt: skip


@registry_app.command("list")
def list_command(registry: RegistryOpt, as_json: JsonOpt = False, db: DbOpt = None) -> None:
    """The versions, their parents, aliases and headline metrics."""
    from rich.console import Console
    from rich.table import Table

    reg = _open(registry, db)
    data = reg.data()
    versions = reg.versions()
    if as_json:
        typer.echo(json.dumps({"aliases": data["aliases"], "versions": versions}, indent=2))
        return
    table = Table(title=f"registry {registry}")
    for col in ("version", "alias", "parent", "created", "val_bpb", "preference_accuracy", "source"):
        table.add_column(col)
    for v in versions:
        alias = ", ".join(a for a, t in data["aliases"].items() if t == v["id"])
        m = v.get("metrics") or {}
        table.add_row(v["id"], alias, v.get("parent") or "-", v["created"],
                      *(f"{m[k]:.4f}" if k in m else "-" for k in ("val_bpb", "preference_accuracy")),
                      v.get("source") or "")  # fmt: skip
    Console().print(table)


@registry_app.command("show")
def show_command(
    registry: RegistryOpt,
    version: Annotated[str | None, typer.Argument(help="A version (default: the whole registry).")] = None,
    db: DbOpt = None,
) -> None:
    """One version's full record (lineage, data hashes, config, metrics), or the aliases and decisions."""
    reg = _open(registry, db)
    if version is not None:
        typer.echo(json.dumps(reg.version(version), indent=2))
        return
    data = reg.data()
    typer.echo(json.dumps({"aliases": data["aliases"], "champion_history": data["champion_history"],
                           "versions": [v["id"] for v in reg.versions()], "decisions": data["decisions"]},
                          indent=2))  # fmt: skip


@registry_app.command("report")
def report_command(registry: RegistryOpt, db: DbOpt = None) -> None:
    """Write REGISTRY/report.html: every decision with its numbers and rule, and the versions' lineage."""
    from fornalha.improve.registry import write_report

    typer.echo(f"report: {write_report(_open(registry, db))}")


@registry_app.command("promote")
def promote_command(
    registry: RegistryOpt,
    version: Annotated[
        str | None, typer.Argument(help="The version to promote (default: the challenger).")
    ] = None,
    val_data: Annotated[
        Path | None,
        typer.Option("--val-data", help="Dataset or shards folder: measure both models' val bpb on it now."),
    ] = None,
    pairs: Annotated[
        Path | None,
        typer.Option("--pairs", help="Held-out preference pairs (JSONL): measure both models on them now."),
    ] = None,
    tolerance: ToleranceOpt = GatePolicy.bpb_tolerance,
    metric: GateMetricOpt = GatePolicy.feedback_metric,
    min_gain: MinGainOpt = GatePolicy.min_gain,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Validation tokens scored per model.")
    ] = MAX_VAL_TOKENS,
    max_pairs: Annotated[int, typer.Option("--max-pairs", help="Pairs scored per model.")] = MAX_PAIRS,
    device: Annotated[str, typer.Option("--device", help="Where the models are measured.")] = "cpu",
    force: Annotated[
        bool, typer.Option("--force", help="Promote without (or against) the gate; recorded.")
    ] = False,
    db: DbOpt = None,
) -> None:
    """Run the evaluation gate and make the challenger the champion if it passes (exit 3 if refused).

    Without --val-data/--pairs the gate compares the metrics each version recorded at registration.

    Example: fornalha registry promote --registry models/ --val-data data/pt --pairs feedback/heldout_pairs.jsonl
    """
    from fornalha.improve.gate import promote_through_gate

    policy = GatePolicy(bpb_tolerance=tolerance, feedback_metric=metric, min_gain=min_gain)
    decision = promote_through_gate(
        registry, version, db=db, val_data=val_data, pairs=pairs, policy=policy, max_tokens=max_tokens,
        max_pairs=max_pairs, device=device, force=force,
    )  # fmt: skip
    for reason in decision.reasons or []:
        typer.echo(f"  {reason}")
    if decision.promoted:
        typer.echo(
            f"promoted {decision.challenger}: champion {decision.champion_before} -> {decision.champion_after}"
        )
        return
    typer.echo(
        f"refused {decision.challenger}: {decision.champion_before} stays the champion (decision {decision.id})"
    )
    raise typer.Exit(REFUSED_EXIT)


@registry_app.command("rollback")
def rollback_command(
    registry: RegistryOpt,
    to: Annotated[
        str | None, typer.Option("--to", help="An earlier champion (default: the previous one).")
    ] = None,
    db: DbOpt = None,
) -> None:
    """Make the previous champion the champion again (recorded as a decision)."""
    from fornalha.improve.registry import write_report

    reg = _open(registry, db)
    try:
        decision = reg.rollback(to)
        write_report(reg)
    finally:
        reg.close()
    typer.echo(f"rolled back: champion {decision.champion_before} -> {decision.champion_after}")


def register(app: typer.Typer) -> None:
    """Add `registry` to the main app."""
    app.add_typer(registry_app, name="registry")
