"""`fornalha data …`: the data stage's command group.

`prepare` (collect and clean) lives in `cli/data_prepare.py`, `tokenize` (token shards) in
`cli/data_tokenize.py`; both add their commands to `data_app`.
"""

import typer

data_app = typer.Typer(
    help="Collect, clean and split text (prepare); turn it into token shards (tokenize).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    from fornalha.cli import data_prepare, data_tokenize

    data_prepare.register(data_app)
    data_tokenize.register(data_app)
    app.add_typer(data_app, name="data")
