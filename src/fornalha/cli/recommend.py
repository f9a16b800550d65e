"""`fornalha recommend prepare|train|eval|predict`: the sequential recommender (fornalha.recommend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

recommend_app = typer.Typer(
    help="Sequential recommendation with the project's GPT over item ids: prepare, train, eval, predict.",
    no_args_is_help=True,
)


@recommend_app.command("prepare", no_args_is_help=True)
def prepare_command(
    ratings: Annotated[Path, typer.Option("--ratings", help="Interactions file.")],
    out: Annotated[Path, typer.Option("--out", help="Data folder to write.")],
    items: Annotated[Path | None, typer.Option("--items", help="Items file id::title::genres.")] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="movietweetings | movielens (user::item::rating::ts) | csv.")
    ] = "movietweetings",
    min_interactions: Annotated[
        int, typer.Option("--min-interactions", help="Keep users with this many.")
    ] = 5,
    min_item_interactions: Annotated[
        int,
        typer.Option("--min-item-interactions", help="Items with fewer are cold (content fallback only)."),
    ] = 1,
    vocab_from: Annotated[
        Path | None, typer.Option("--vocab-from", help="Use this run's item vocabulary (new users).")
    ] = None,
) -> None:
    """Time-ordered item sequences per user, leave-one-out split.

    Example: fornalha recommend prepare --ratings ../shared/data/recsys/movietweetings_ratings_uidmod5_1-4.dat
    --items ../shared/data/recsys/movietweetings_movies.dat --out data/mt
    """
    from fornalha.recommend.data import prepare

    man = prepare(ratings, out, items_file=items, fmt=fmt, min_interactions=min_interactions,
                  min_item_interactions=min_item_interactions, vocab_from=vocab_from)  # fmt: skip
    typer.echo(
        f"{man['users']} users, {man['items']} items, {man['interactions']} interactions "
        f"(dropped: {man['dropped']}); cold start: {man['cold_items']} cold items, "
        f"{man['cold_users']} cold users -> {out}"
    )
    typer.echo(json.dumps(man))


@recommend_app.command("train", no_args_is_help=True)
def train_command(
    data: Annotated[Path, typer.Option("--data", help="Folder written by `recommend prepare`.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder to write.")],
    preset: Annotated[str, typer.Option("--preset", help="tiny | small.")] = "tiny",
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key (repeatable).")
    ] = None,
    time_budget: Annotated[float | None, typer.Option("--time-budget", help="Wall-clock minutes.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
) -> None:
    """Train the GPT over item tokens (next-item cross-entropy; best/ by validation NDCG@10).

    Example: fornalha recommend train --data data/mt --out runs/rec --time-budget 5
    """
    from fornalha.recommend.model import train_recommender

    summary = train_recommender(data, out, preset, sets, time_budget, resume)
    typer.echo(json.dumps(summary.get("best", summary), default=str))


@recommend_app.command("eval", no_args_is_help=True)
def eval_command(
    run: Annotated[Path, typer.Option("--run", help="Trained recommender run folder.")],
    data: Annotated[Path, typer.Option("--data", help="Prepared data folder (same item vocabulary).")],
    k: Annotated[int, typer.Option("--k", help="Cut-off also reported besides 5, 10, 20.")] = 10,
    lm_run: Annotated[
        Path | None,
        typer.Option("--lm-run", help="Language-model run whose text embedding answers cold users."),
    ] = None,
) -> None:
    """Full-ranking HR/NDCG of the model and of popularity, item-kNN and ALS on the same users;
    with --lm-run, also the cold users' content fallback against popularity (cold_… keys)."""
    from rich.console import Console
    from rich.table import Table

    from fornalha.recommend.evaluation import evaluate_run, table

    if k < 1:
        from fornalha.errors import ConfigError

        raise ConfigError(f"--k must be at least 1, got {k}")
    result = evaluate_run(run, data, k, lm_run=lm_run)
    ks = sorted({5, 10, 20, k})
    tab = Table(title=f"{result['users']} users, {result['items']} items, full ranking, seen items excluded")
    for col in ["method"] + [f"{m}@{kk}" for kk in ks for m in ("HR", "NDCG")]:
        tab.add_column(col)
    for row in table(result, k):
        tab.add_row(*row)
    console = Console(stderr=True)
    console.print(tab)
    if "cold_content_ndcg@10" in result:
        console.print(
            f"cold start: {result['cold_users']} users with cold-only histories — content (text weight "
            f"{result['cold_text_weight']} against popularity, chosen on validation) "
            f"HR@10 {result['cold_content_hr@10']:.4f} NDCG@10 {result['cold_content_ndcg@10']:.4f}; text alone "
            f"NDCG@10 {result['cold_text_ndcg@10']:.4f}; popularity "
            f"HR@10 {result['cold_popularity_hr@10']:.4f} NDCG@10 {result['cold_popularity_ndcg@10']:.4f}"
        )
    typer.echo(json.dumps(result))


@recommend_app.command("predict", no_args_is_help=True)
def predict_command(
    run: Annotated[Path, typer.Option("--run", help="Trained recommender run folder.")],
    history: Annotated[list[str], typer.Option("--history", help="An item id, oldest first (repeatable).")],
    k: Annotated[int, typer.Option("--k", help="How many items.")] = 10,
    include_seen: Annotated[bool, typer.Option("--include-seen", help="Allow items of the history.")] = False,
    lm_run: Annotated[
        Path | None,
        typer.Option("--lm-run", help="Language-model run for cold-only histories (item text embedding)."),
    ] = None,
) -> None:
    """The next items for a history. Example: fornalha recommend predict --run runs/rec --history 0114709"""
    from fornalha.recommend.recommender import Recommender

    rec = Recommender(run)
    if lm_run is not None:
        from fornalha.recommend.content import lm_embedder

        rec.use_text_model(*lm_embedder(lm_run))
    ans = rec.answer(history, k, exclude_seen=not include_seen)
    for i, r in enumerate(ans["data"], 1):
        typer.echo(f"{i:>3}. {r['item']}  {r['score']:.3f}  {r.get('title', '')}", err=True)
    typer.echo(json.dumps(ans))


def register(app: typer.Typer) -> None:
    app.add_typer(recommend_app, name="recommend")
