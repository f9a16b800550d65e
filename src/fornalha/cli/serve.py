"""`fornalha serve`: an OpenAI-compatible HTTP server for a run folder (see docs/serve.md).

One process: uvicorn serves the FastAPI app of `fornalha.serve.app`, whose engine thread owns the
model. Every flag can also come from an environment variable (FORNALHA_PORT, FORNALHA_HOST, …),
handy in containers. SIGTERM or Ctrl-C stops accepting connections, lets in-flight requests
finish for at most --drain-timeout seconds, and exits 0.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fornalha.errors import ConfigError, FornalhaError


def _opt(flag: str, env: str, help: str) -> typer.models.OptionInfo:  # noqa: A002
    return typer.Option(flag, envvar=env, help=help)


def engine_recipe(run: Path, device: str, max_batch: int):  # noqa: ANN201 - an Engine
    """The engine process's engine (fornalha.serve.engine_process): the run's best checkpoint
    with `max_batch` slots and prefix caching, as `fornalha serve` decodes with."""
    return serving_engine(run, device, max_batch, process=False)[0]


def serving_engine(run: Path, device: str, max_batch: int, process: bool):  # noqa: ANN201 - (Engine, tokenizer)
    """(engine, tokenizer) of the server's process for `run`, at start and at each hot swap. With an
    engine process it serves embeddings and checks only (one slot) and carries the engine process's
    `recipe`; else it is the engine that decodes."""
    from fornalha.cli.infer import _load_engine

    if not process:
        return _load_engine(run, "best", device, "auto", max_batch, prefix_caching=True)
    engine, tokenizer = _load_engine(run, "best", device, "auto", 1)
    engine.recipe = functools.partial(engine_recipe, run, device, max_batch)
    return engine, tokenizer


def serving_threads(threads: int | None) -> int:
    """The model's thread count on a CPU: `threads`, or every core but one. The HTTP side (and,
    on a laptop, the clients) needs a core of its own: when the model's threads compete with it
    for every core, each small parallel operation of a decode step waits for a descheduled
    thread. On 2 cores under 16 streams, 1 thread gave 1.1x the throughput of 2, and one stream
    1.8x (benchmarks/LOG.md, 2026-12-01)."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        return threads
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(torch.get_num_threads(), cores - 1))  # torch's default: the physical cores


def serve_command(
    run: Annotated[
        Path | None, _opt("--run", "FORNALHA_RUN", "Run folder to serve (its best checkpoint).")
    ] = None,
    host: Annotated[str, _opt("--host", "FORNALHA_HOST", "Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, _opt("--port", "FORNALHA_PORT", "TCP port.")] = 8000,
    model_name: Annotated[
        str | None,
        _opt("--model-name", "FORNALHA_MODEL_NAME", "Name clients use (default: the run folder's name)."),
    ] = None,
    api_keys_file: Annotated[
        Path | None,
        _opt(
            "--api-keys-file",
            "FORNALHA_API_KEYS_FILE",
            "File with one accepted API key per line (else env FORNALHA_API_KEYS, comma-separated; none: open).",
        ),
    ] = None,  # fmt: skip
    max_batch: Annotated[int, _opt("--max-batch", "FORNALHA_MAX_BATCH", "Sequences decoded together.")] = 16,
    max_queue: Annotated[
        int, _opt("--max-queue", "FORNALHA_MAX_QUEUE", "Sequences that may wait for a slot; beyond: 429.")
    ] = 64,
    device: Annotated[str, _opt("--device", "FORNALHA_DEVICE", "auto, cpu, cuda or mps.")] = "auto",
    engine_mode: Annotated[
        str,
        _opt(
            "--engine",
            "FORNALHA_ENGINE",
            "process: the decode loop in a process of its own (no lock shared with the HTTP side); "
            "thread: in a thread of the server's process.",
        ),
    ] = "process",
    threads: Annotated[
        int | None,
        _opt(
            "--threads",
            "FORNALHA_THREADS",
            "PyTorch threads for the model on a CPU (default: cores - 1, leaving one to the HTTP side).",
        ),
    ] = None,
    rate_limit: Annotated[
        float | None,
        _opt("--rate-limit", "FORNALHA_RATE_LIMIT", "Requests per second per key (default: none)."),
    ] = None,
    rate_burst: Annotated[
        int | None, _opt("--rate-burst", "FORNALHA_RATE_BURST", "Bucket size of the rate limit.")
    ] = None,
    request_timeout: Annotated[
        float, _opt("--request-timeout", "FORNALHA_REQUEST_TIMEOUT", "Seconds a request may take.")
    ] = 600.0,
    drain_timeout: Annotated[
        float,
        _opt("--drain-timeout", "FORNALHA_DRAIN_TIMEOUT", "Seconds in-flight requests get at shutdown."),
    ] = 30.0,
    db: Annotated[
        str | None,
        _opt(
            "--db",
            "FORNALHA_DB",
            "SQLAlchemy URL of the store of completions and ratings (default: sqlite:///RUN/serve.db).",
        ),
    ] = None,
    recommender: Annotated[
        Path | None,
        _opt(
            "--recommender",
            "FORNALHA_RECOMMENDER",
            "A `fornalha recommend train` run: adds POST /v1/recommendations (cold-only histories are "
            "answered from item text embedded by the served language model).",
        ),
    ] = None,
    docs: Annotated[
        Path | None,
        _opt(
            "--docs",
            "FORNALHA_DOCS",
            "Folder of documents: chat answers quote the best passages, with sources.",
        ),
    ] = None,
    docs_top_k: Annotated[int, _opt("--docs-top-k", "FORNALHA_DOCS_TOP_K", "Passages quoted per turn.")] = 3,
    retrieval: Annotated[
        str, _opt("--retrieval", "FORNALHA_RETRIEVAL", "bm25, or hybrid (BM25 + the model's embeddings).")
    ] = "bm25",
    no_log_prompts: Annotated[
        bool, _opt("--no-log-prompts", "FORNALHA_NO_LOG_PROMPTS", "Store only metadata, not texts.")
    ] = False,
    # --- issue 15 (registry helper): serve a registry's champion, switch on promotion ---
    registry: Annotated[
        Path | None,
        _opt(
            "--registry",
            "FORNALHA_REGISTRY",
            "Serve this model registry's champion instead of --run; "
            "switch without a restart when another version is promoted.",
        ),
    ] = None,  # fmt: skip
    registry_poll: Annotated[
        float,
        _opt(
            "--registry-poll",
            "FORNALHA_REGISTRY_POLL",
            "Seconds between looks at the champion alias (0: never).",
        ),
    ] = 2.0,
    admin_keys_file: Annotated[
        Path | None,
        _opt(
            "--admin-keys-file",
            "FORNALHA_ADMIN_KEYS_FILE",
            "Keys for POST /admin/reload, one per line "
            "(else env FORNALHA_ADMIN_KEYS, comma-separated; none: admin endpoints off).",
        ),
    ] = None,  # fmt: skip
) -> None:
    """Serve a run over OpenAI's HTTP API (completions, chat, embeddings) with continuous batching."""
    import uvicorn

    from fornalha.cli.infer import _docs_retriever, _read_docs
    from fornalha.serve.app import create_app
    from fornalha.serve.auth import load_keys

    if max_batch < 1 or max_queue < 0:
        raise ConfigError("--max-batch must be >= 1 and --max-queue >= 0")
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}")
    keys = load_keys(api_keys_file)
    if (run is None) == (registry is None):
        raise ConfigError("give --run RUN or --registry DIR (one of them)")
    version = None
    if registry is not None:  # issue 15: the champion's folder is a run folder
        from fornalha.improve.registry import champion_of, default_db_url

        found = champion_of(registry)
        if found is None:
            raise ConfigError(f"the registry {registry} has no champion yet; register a run first")
        version, run = found
        db = db or default_db_url(registry)
        model_name = model_name or registry.resolve().name
    assert run is not None
    from fornalha.serve import web
    from fornalha.serve.store import Store

    rec = None
    if recommender is not None:
        from fornalha.recommend.recommender import Recommender

        rec = Recommender(recommender)
    passages = _read_docs(docs, retrieval, docs_top_k)
    if engine_mode not in ("process", "thread"):
        raise ConfigError(f"--engine must be process or thread, got {engine_mode!r}")
    process = engine_mode == "process"
    n_threads = serving_threads(threads)
    engine, tokenizer = serving_engine(run, device, max_batch, process)
    cpu = engine.device.type == "cpu"
    if cpu:
        import torch

        torch.set_num_threads(n_threads)
    retriever = _docs_retriever(passages, retrieval, engine, tokenizer)
    if rec is not None:  # cold-only histories: nearest items by this LM's text embedding (/v1/embeddings)
        from fornalha.assistant import engine_embedder
        from fornalha.recommend.content import lm_key

        rec.use_text_model(engine_embedder(engine, tokenizer), lm_key(run))
    store = Store(db or f"sqlite:///{run.resolve() / 'serve.db'}", log_prompts=not no_log_prompts)
    name = model_name or run.resolve().name
    app = create_app(
        engine, tokenizer, model_name=name, api_keys=keys, rate_limit=rate_limit, rate_burst=rate_burst,
        max_queue=max_queue, request_timeout=request_timeout, store=store, model_version=version,
        retriever=retriever, docs_top_k=docs_top_k, engine_process=process, engine_threads=n_threads if cpu else None,
    )  # fmt: skip
    if registry is not None:
        _serve_registry(app, registry, registry_poll, admin_keys_file, run, device, max_batch, db, process)
    app.state.extra_routers.append(web.router)  # GET / (the chat page) and POST /v1/feedback
    if rec is not None:
        from fornalha.recommend.api import build_router

        app.state.extra_routers.append(build_router(rec))

    from fornalha.serve.async_engine import freeze_startup_objects

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; a drained server exits 0."""

        def handle_exit(self, sig, frame) -> None:  # type: ignore[no-untyped-def]
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(max(1, drain_timeout)),
        lifespan="on",
    )  # fmt: skip
    server = Server(config)
    auth = f"{len(keys)} API key(s)" if keys else "no API key (open)"
    shown = f"{name} version {version}" if version else name  # issue 15: the registry version served
    print(f"serving {shown} at http://{host}:{port}/v1 ({auth}; max batch {max_batch}, queue {max_queue})",
          flush=True)  # fmt: skip
    freeze_startup_objects()  # the model and every module: out of the full collections' way
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        server.started = False
    if app.state.startup_error is not None:
        raise FornalhaError(f"could not start the engine: {app.state.startup_error}")
    if not server.started:
        raise FornalhaError(f"could not start the server on {host}:{port} (is the port in use?)")
    print("server stopped", file=sys.stderr, flush=True)


def _serve_registry(app, registry: Path, poll: float, admin_keys_file: Path | None, first: Path, device: str,
                    max_batch: int, db: str | None = None, process: bool = False) -> None:  # fmt: skip
    """Issue 15: watch the registry's champion alias; mount POST /admin/reload and /admin/promote (serve/swap.py)."""
    from fornalha.files import file_sha256
    from fornalha.improve.registry import champion_of
    from fornalha.serve.auth import load_keys
    from fornalha.serve.swap import SwapError, admin_router, watch

    admin_keys = load_keys(admin_keys_file, env=os.environ.get("FORNALHA_ADMIN_KEYS", ""))
    tokenizer_sha = file_sha256(first / "tokenizer" / "tokenizer.json")

    def load(path: Path):  # noqa: ANN202 - an Engine, built in a worker thread
        if file_sha256(path / "tokenizer" / "tokenizer.json") != tokenizer_sha:
            raise SwapError(f"{path} has another tokenizer than the version being served; restart the server")
        return serving_engine(path, device, max_batch, process)[0]

    slot = app.state.slot
    from fornalha.improve.gate import promote_through_gate

    promote = functools.partial(promote_through_gate, registry, db=db, device=device)  # the CLI's gate
    app.state.extra_routers.append(
        admin_router(slot, admin_keys, lambda: champion_of(registry), load, promote)
    )
    if poll > 0:
        app.state.background.append(lambda _app: watch(slot, lambda: champion_of(registry), load, poll))


def register(app: typer.Typer) -> None:
    """Add `serve` to the main app."""
    app.command("serve", no_args_is_help=True)(serve_command)
