"""The FastAPI app: OpenAI's API over one `Engine`.

    create_app(engine, tokenizer, model_name=...) -> FastAPI

Routes: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream``
gives server-sent events ending in ``data: [DONE]``), ``POST /v1/embeddings``, ``GET /health``,
``GET /ready``, ``GET /metrics``. What a request goes through::

    size limit ─► API key ─► rate limit ─► body validated (unknown parameter = 400 naming it)
      ─► model name ─► response_format / tools compiled to a grammar (structured.py)
      ─► prompt tokenized and checked against the context ─► queue capacity
      ─► n sequences into the engine (async_engine) ─► JSON answer or SSE stream
      ─► the finished completion handed to the store (when one is attached)

Chat completions carry two extension fields (fornalha.assistant; on the last streamed chunk too):
``conversation`` (the oldest messages dropped to fit the context window, and a note saying so) and,
when the server indexes documents (``retriever``), ``sources`` (the passages quoted in the prompt).

Seams for what builds on this server: ``app.state.store`` (an object with
``record_completion(dict)`` and ``close()``), ``app.state.extra_routers`` (routers the CLI adds
before the app starts serving — the web page, the recommender), ``app.state.background`` (coroutine
functions of the app run for the server's life — the registry watcher) and every response's ``id``.

Hot swap (swap.py): every request takes ``app.state.slot.current`` (an engine runner and the model
version) once, when it arrives, and uses it to its end; a swap only changes what later requests take.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fornalha.assistant import PreparedChat, Retriever, default_reserve, prepare_chat
from fornalha.infer.engine import Engine, Event
from fornalha.infer.sampling import SamplingParams
from fornalha.serve.async_engine import AsyncEngine, EngineStopped, QueueFull, RequestTimeout
from fornalha.serve.auth import KeyChecker, RateLimiter
from fornalha.serve.engine_process import ProcessEngine
from fornalha.serve.errors import APIError, error_body, install_error_handlers
from fornalha.serve.metrics import Metrics
from fornalha.serve.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, _Sampling
from fornalha.serve.structured import ChoiceReader, grammar_for, template_messages
from fornalha.serve.swap import ModelSlot, Served

MAX_BODY_BYTES = 1 << 20


class _Guard:
    """ASGI middleware: rejects bodies over the limit (400) and counts every response's status."""

    def __init__(self, app: Any, max_body: int, metrics: Metrics) -> None:
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        status = {"code": 500}

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        too_big = length is not None and (not length.isdigit() or int(length) > self.max_body)
        if not too_big:
            seen = 0

            async def receive_limited() -> dict:
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > self.max_body:
                        raise _TooBig
                return message

            try:
                await self.app(scope, receive_limited, send_counted)
            except _TooBig:
                too_big = True
        if too_big:
            body = error_body(400, f"request body larger than {self.max_body} bytes", None, "body_too_large")
            await JSONResponse(body, 400)(scope, receive, send_counted)
        endpoint = path if path.startswith("/v1/") or path in ("/health", "/ready", "/metrics") else "other"
        self.metrics.requests.labels(endpoint, str(status["code"])).inc()


class _TooBig(Exception):
    pass


async def client_gone(request: Request) -> None:
    """Returns when the client closes its connection. Once the body has been read, the server's next
    ASGI message for this request is `http.disconnect` (uvicorn sends it when the socket closes)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.01)  # a server that answers at once rather than waiting must not spin


def _now_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def create_app(
    engine: Engine,
    tokenizer: Any,
    *,
    model_name: str = "fornalha",
    api_keys: list[str] | None = None,
    rate_limit: float | None = None,
    rate_burst: int | None = None,
    max_queue: int = 64,
    request_timeout: float | None = 600.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    store: Any = None,
    model_version: str | None = None,
    retriever: Retriever | None = None,
    docs_top_k: int = 3,
    engine_process: bool = False,
    engine_threads: int | None = None,
) -> FastAPI:
    """The server for `engine`, whose decode loop runs from startup to shutdown in a thread of
    this process, or with `engine_process` (and an `engine.recipe`) in a process of its own with
    `engine_threads` PyTorch threads (fornalha.serve.engine_process says why).

    api_keys: accepted keys (None or empty: no authentication). rate_limit: requests per second
    per key (None: unlimited), with bursts of rate_burst. max_queue: sequences that may wait for
    a KV-cache slot before new requests get 429. request_timeout: seconds per request.
    store: where finished completions are recorded (see the module docstring), or None.
    model_version: the registry version served (`system_fingerprint` of every response), or None.
    retriever: passages of the user's documents quoted in every chat turn (docs_top_k at most), with
    their ``sources`` returned beside the answer; None: no retrieval.
    """
    metrics = Metrics()

    hits: dict[int, int] = {}  # engine id -> prefix-hit tokens already counted (hot swap: several engines)

    def on_step(eng: Any) -> None:  # the Engine, or the engine process's EngineStats
        metrics.queue_depth.set(eng.num_waiting)
        metrics.running.set(eng.num_running)
        seen = hits.get(id(eng), 0)
        if eng.prefix_hit_tokens > seen:
            metrics.prefix_hit_tokens.inc(eng.prefix_hit_tokens - seen)
            hits[id(eng)] = eng.prefix_hit_tokens

    def make_runner(eng: Engine) -> AsyncEngine:
        if engine_process and eng.recipe is not None:  # the decode loop in a process of its own
            return ProcessEngine(eng, max_queue=max_queue, request_timeout=request_timeout, on_step=on_step,
                                 threads=engine_threads)  # fmt: skip
        return AsyncEngine(eng, max_queue=max_queue, request_timeout=request_timeout, on_step=on_step)

    slot = ModelSlot(Served(make_runner(engine), model_version), make_runner)
    keys = KeyChecker(api_keys or [])
    limiter = RateLimiter(rate_limit, rate_burst)
    created = int(time.time())
    ctx = engine.max_seq_len

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for router in app.state.extra_routers:
            app.include_router(router)
        try:
            slot.start()
        except EngineStopped as exc:  # the engine process could not load the model (out of memory, …)
            app.state.startup_error = str(exc)
            raise
        tasks = [asyncio.create_task(fn(app)) for fn in app.state.background]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            slot.stop()
            if app.state.store is not None:
                app.state.store.close()

    app = FastAPI(title="fornalha", version="1", lifespan=lifespan)
    app.state.store = store
    app.state.startup_error = None  # why the engine did not start, for the CLI's message
    app.state.extra_routers = []
    app.state.background = []
    app.state.slot = slot
    app.state.metrics = metrics
    app.state.model_name = model_name
    app.state.tokenizer = tokenizer
    app.state.retriever = retriever  # fornalha.assistant.Retriever over the --docs folder, or None
    app.state.docs_top_k = docs_top_k
    install_error_handlers(app)
    app.add_middleware(_Guard, max_body=max_body_bytes, metrics=metrics)

    # ---- authentication and rate limit --------------------------------------------------------
    async def authorize(request: Request) -> str:
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header[:7].lower() == "bearer " else None
        who = request.client.host if request.client else "anonymous"
        if keys.enabled:
            key = keys.check(presented)
            if key is None:
                raise APIError(401, "missing or invalid API key (send Authorization: Bearer KEY)",
                               code="invalid_api_key")  # fmt: skip
            who = key
        wait = limiter.retry_after(who)
        if wait > 0:
            raise APIError(429, f"rate limit exceeded; retry in {wait:.1f} s", code="rate_limit_exceeded",
                           headers={"Retry-After": str(max(1, round(wait + 0.5)))})  # fmt: skip
        return who

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])
    app.state.authorize = authorize  # for routers added later (POST /v1/explain)

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip

    def check_context(ids: list[int], param: str) -> None:
        if not ids:
            raise APIError(400, "the prompt is empty", param=param, code="empty_prompt")
        if len(ids) >= ctx:
            raise APIError(400, f"the prompt has {len(ids)} tokens; the model's context window is {ctx} tokens "
                           "and needs room for at least one new token", param=param,
                           code="context_length_exceeded")  # fmt: skip
        bad = [i for i in ids if not 0 <= i < engine.config.vocab_size]
        if bad:
            raise APIError(
                400, f"token id {bad[0]} is outside the vocabulary", param=param, code="invalid_value"
            )

    def sampling(
        req: _Sampling, max_tokens: int | None, prompt_len: int, logprobs: int | None
    ) -> SamplingParams:
        room = ctx - prompt_len
        if max_tokens is None:
            max_tokens = room
        elif max_tokens > room:
            raise APIError(400, f"max_tokens={max_tokens} is too large: the prompt has {prompt_len} tokens and "
                           f"the context window is {ctx}, so at most {room} can be generated",
                           param="max_tokens", code="invalid_value")  # fmt: skip
        stop = req.stop_list()
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop takes at most 4 non-empty strings", param="stop", code="invalid_value")
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=stop,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            logprobs=logprobs,
            ignore_eos=req.ignore_eos,
        )

    async def prepare_turn(srv: Served, msgs: list[dict[str, str]], max_tokens: int | None) -> PreparedChat:
        """fornalha.assistant.prepare_chat for this request: the oldest turns dropped to fit, passages
        retrieved (on the engine's thread when retrieval runs the model)."""
        retriever = app.state.retriever
        work = functools.partial(prepare_chat, msgs, tokenizer, context=ctx, retriever=retriever,
                                 reserve=max_tokens or default_reserve(ctx), top_k=app.state.docs_top_k)  # fmt: skip
        if retriever is not None and retriever.uses_embeddings:
            return await srv.runner.call(lambda eng: work())
        return await asyncio.to_thread(work)

    def deadline() -> float | None:
        return None if request_timeout is None else time.monotonic() + request_timeout

    def reserve(runner: AsyncEngine, n: int) -> None:
        runner.check_alive()  # a 503 before a stream starts, not an error chunk after a 200
        try:
            runner.reserve(n)
        except QueueFull as exc:
            raise APIError(
                429, f"{exc}; retry shortly", code="queue_full", headers={"Retry-After": "1"}
            ) from None

    async def merged(
        runner: AsyncEngine, jobs: list[tuple[list[int], SamplingParams]]
    ) -> AsyncIterator[tuple[int, Event]]:
        """Events of several sequences (the n choices, the prompts) as (choice index, event)."""
        end = deadline()
        if len(jobs) == 1:  # the common case: no pump task, no second queue hop per token
            ids, params = jobs[0]
            async with aclosing(runner.generate(ids, params, end)) as events:  # closed = aborted
                async for ev in events:
                    yield 0, ev
            return
        q: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, ids: list[int], params: SamplingParams) -> None:
            try:
                async for ev in runner.generate(ids, params, end):
                    await q.put((i, ev))
                await q.put((i, None))
            except Exception as exc:
                await q.put((i, exc))

        tasks = [asyncio.create_task(pump(i, ids, p)) for i, (ids, p) in enumerate(jobs)]
        try:
            left = len(tasks)
            while left:
                i, item = await q.get()
                if item is None:
                    left -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def token_text(tok: int) -> tuple[str, list[int]]:
        b = tokenizer.decode_bytes([tok])
        return b.decode("utf-8", errors="replace"), list(b)

    def chat_logprob(ev: Event) -> dict[str, Any]:
        lp = ev.logprob
        assert lp is not None
        text, b = token_text(lp.token_id)
        top = []
        for t, v in lp.top:
            tt, tb = token_text(t)
            top.append({"token": tt, "logprob": v, "bytes": tb})
        return {"token": text, "logprob": lp.logprob, "bytes": b, "top_logprobs": top}

    class _Choice:
        def __init__(self) -> None:
            self.text: list[str] = []
            self.tokens = 0
            self.finish_reason: str | None = None
            self.logprobs: list[Event] = []

    def record(kind: str, rid: str, req: Any, choices: list[_Choice], prompt_tokens: int, start: float,
               ttft: float | None, user: str | None, version: str | None = None) -> None:  # fmt: skip
        st = app.state.store
        if st is None:
            return
        st.record_completion({
            "id": rid, "created": time.time(), "model": model_name, "endpoint": kind,
            "request": req.model_dump(exclude_none=True), "output": ["".join(c.text) for c in choices],
            "finish_reasons": [c.finish_reason for c in choices], "prompt_tokens": prompt_tokens,
            "completion_tokens": sum(c.tokens for c in choices), "latency_ms": (time.perf_counter() - start) * 1e3,
            "ttft_ms": None if ttft is None else ttft * 1e3, "user": user, "model_version": version,
        })  # fmt: skip

    def observe(choices: list[_Choice], prompt_tokens: int, start: float) -> None:
        metrics.prompt_tokens.inc(prompt_tokens)
        metrics.completion_tokens.inc(sum(c.tokens for c in choices))
        metrics.latency.observe(time.perf_counter() - start)

    async def run(
        request: Request, srv: Served, kind: str, rid: str, req: Any, jobs: list[tuple[list[int], SamplingParams]], prompt_tokens: int,
        make_chunk: Callable[[int, Event, _Choice], dict | None], first_chunks: list[dict],
        final: Callable[[list[_Choice]], dict], usage_chunk: Callable[[dict], dict], stream: bool,
        include_usage: bool,
    ) -> Any:  # fmt: skip
        """Drive the jobs on srv's engine; a JSON response (final(choices)) or an SSE stream of chunks."""
        runner = srv.runner
        reserve(runner, len(jobs))
        start = time.perf_counter()
        choices = [_Choice() for _ in jobs]
        state: dict[str, Any] = {"ttft": None, "last": {}}

        def book(i: int, ev: Event) -> None:
            c = choices[i]
            now = time.perf_counter()
            if ev.token_id is not None:
                c.tokens += 1
            if state["ttft"] is None:
                state["ttft"] = now - start
                metrics.ttft.observe(state["ttft"])
            last = state["last"].get(i)
            if last is not None:
                metrics.itl.observe(now - last)
            state["last"][i] = now
            c.text.append(ev.text)
            if ev.logprob is not None:
                c.logprobs.append(ev)
            if ev.finished:
                c.finish_reason = ev.finish_reason

        def record_cut_short(reason: str) -> None:
            """The request ended before its last token (its client left, it timed out, the engine
            stopped): counted by reason, and its partial answer recorded so that it can still be rated."""
            metrics.cancelled.labels(reason).inc()
            for c in choices:
                c.finish_reason = c.finish_reason or "abort"
            record(kind, rid, req, choices, prompt_tokens, start, state["ttft"], req.user, srv.version)

        def usage() -> dict[str, int]:
            done = sum(c.tokens for c in choices)
            return {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": done,
                "total_tokens": prompt_tokens + done,
            }

        if not stream:

            async def collect() -> None:
                async for i, ev in merged(runner, jobs):
                    book(i, ev)

            work = asyncio.create_task(collect())
            gone = asyncio.create_task(client_gone(request))
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():  # the client left: cancel its sequences, their slots free within a step
                    work.cancel()
                    await asyncio.gather(work, return_exceptions=True)
                    record_cut_short("disconnect")
                    return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
                work.result()
            except RequestTimeout as exc:
                raise APIError(408, str(exc), code="timeout") from None
            finally:
                gone.cancel()
                runner.release(len(jobs))
            observe(choices, prompt_tokens, start)
            record(kind, rid, req, choices, prompt_tokens, start, state["ttft"], req.user, srv.version)
            body = final(choices)
            body["usage"] = usage()
            return JSONResponse(body)

        released = []

        def release_once() -> None:
            if not released:
                released.append(True)
                runner.release(len(jobs))

        async def sse() -> AsyncIterator[str]:
            try:
                for chunk in first_chunks:
                    yield f"data: {json.dumps(chunk)}\n\n"
                async for i, ev in merged(runner, jobs):
                    book(i, ev)
                    chunk = make_chunk(i, ev, choices[i])
                    if chunk is not None:
                        yield f"data: {json.dumps(chunk)}\n\n"
                if include_usage:
                    yield f"data: {json.dumps(usage_chunk(usage()))}\n\n"
                observe(choices, prompt_tokens, start)
                # recorded before [DONE]: a rating posted right after the stream finds its completion
                record(kind, rid, req, choices, prompt_tokens, start, state["ttft"], req.user, srv.version)
                state["recorded"] = True
                yield "data: [DONE]\n\n"
            except RequestTimeout as exc:
                state["cut"] = "timeout"
                yield f"data: {json.dumps(error_body(408, str(exc), None, 'timeout'))}\n\n"
            except EngineStopped as exc:
                state["cut"] = "engine_stopped"
                yield f"data: {json.dumps(error_body(503, str(exc), None, 'engine_stopped'))}\n\n"
            finally:
                if not state.get("recorded"):  # no error of ours ended it: the client did
                    record_cut_short(state.get("cut", "disconnect"))
                release_once()

        stream_body = sse()
        # A client gone before the body starts: the generator never runs its `finally`; the
        # finalizer gives the reservation back when the generator is collected.
        weakref.finalize(stream_body, release_once)
        return StreamingResponse(
            stream_body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    # ---- routes -------------------------------------------------------------------------------
    def model_card() -> dict[str, Any]:
        version = slot.current.version
        card = {"id": model_name, "object": "model", "created": created, "owned_by": "fornalha"}
        return card if version is None else {**card, "version": version}

    @v1.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        check_model(model_id)
        return model_card()

    @v1.post("/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Any:
        srv = slot.current  # this request's model version, to its last token
        check_model(req.model)
        if req.max_tokens is not None and req.max_completion_tokens is not None:
            raise APIError(400, "give max_tokens or max_completion_tokens, not both", param="max_tokens")
        grammar = grammar_for(req)  # response_format / tools -> a grammar (fornalha.serve.structured)
        if grammar is not None and req.ignore_eos:
            raise APIError(400, "ignore_eos cannot be combined with response_format or tools: the grammar ends "
                           "the answer with the end token", param="ignore_eos", code="invalid_value")  # fmt: skip
        # -- assistant: the conversation fitted into the context window, with the --docs passages --
        turn = await prepare_turn(srv, template_messages(req), req.max_completion_tokens or req.max_tokens)
        ids = turn.ids
        extra = {"conversation": turn.info()}  # extension fields of the completion and its last chunk
        if app.state.retriever is not None:
            extra["sources"] = [h.to_dict() for h in turn.sources]
        # -- end assistant --
        check_context(ids, "messages")
        top = req.top_logprobs if req.logprobs else None
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(
                400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value"
            )
        params = sampling(req, req.max_completion_tokens or req.max_tokens, len(ids),
                          (top or 0) if req.logprobs else None).with_(grammar=grammar)  # fmt: skip
        readers = [ChoiceReader(req) for _ in range(req.n)]  # text -> content or tool_calls
        rid, now = _now_id("chatcmpl"), int(time.time())
        jobs = [(ids, params.with_(seed=None if req.seed is None else req.seed + j)) for j in range(req.n)]
        base = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name,
                **srv.fingerprint}  # fmt: skip

        def chunk(i: int, ev: Event, c: _Choice) -> dict | None:
            delta = readers[i].delta(ev.text, ev.finished)
            if not delta and not ev.finished and ev.logprob is None:
                return None
            lp = {"content": [chat_logprob(ev)]} if ev.logprob is not None else None
            reason = readers[i].finish_reason(ev.finish_reason)
            choice = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}
            return {**base, "choices": [choice], **(extra if ev.finish_reason else {})}

        firsts = [{**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]}
                  for i in range(req.n)]  # fmt: skip

        def final(choices: list[_Choice]) -> dict:
            out = []
            for i, c in enumerate(choices):
                lp = {"content": [chat_logprob(e) for e in c.logprobs]} if req.logprobs else None
                message, reason = readers[i].message("".join(c.text), c.finish_reason)
                out.append({"index": i, "message": message, "logprobs": lp, "finish_reason": reason})
            return {
                "id": rid,
                "object": "chat.completion",
                "created": now,
                "model": model_name,
                "choices": out,
                **srv.fingerprint,
                **extra,
            }

        include = bool(req.stream_options and req.stream_options.include_usage)
        return await run(request, srv, "chat.completions", rid, req, jobs, len(ids), chunk, firsts, final,
                         lambda u: {**base, "choices": [], "usage": u, **extra}, req.stream, include)  # fmt: skip

    @v1.post("/completions")
    async def completions(req: CompletionRequest, request: Request) -> Any:
        srv = slot.current  # this request's model version, to its last token
        check_model(req.model)
        bos = getattr(tokenizer, "bos_id", None)
        if isinstance(req.prompt, str):
            prompts = [req.prompt]
        elif req.prompt and all(isinstance(p, int) for p in req.prompt):
            prompts = [list(req.prompt)]
        else:
            prompts = list(req.prompt)
        if not prompts:
            raise APIError(400, "the prompt is empty", param="prompt", code="empty_prompt")
        id_lists = [p if isinstance(p, list) else ([bos] if bos is not None else []) + tokenizer.encode(p)
                    for p in prompts]  # fmt: skip
        for ids in id_lists:
            check_context(ids, "prompt")
        jobs = []
        for ids in id_lists:
            params = sampling(req, req.max_tokens, len(ids), req.logprobs)
            jobs += [
                (ids, params.with_(seed=None if req.seed is None else req.seed + j)) for j in range(req.n)
            ]
        rid, now = _now_id("cmpl"), int(time.time())
        base = {
            "id": rid,
            "object": "text_completion",
            "created": now,
            "model": model_name,
            **srv.fingerprint,
        }

        def logprobs_of(events: list[Event]) -> dict[str, Any]:
            tokens, lps, tops, offsets, at = [], [], [], [], 0
            for e in events:
                assert e.logprob is not None
                text, _ = token_text(e.logprob.token_id)
                tokens.append(text)
                lps.append(e.logprob.logprob)
                tops.append({token_text(t)[0]: v for t, v in e.logprob.top})
                offsets.append(at)
                at += len(text)
            return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

        def chunk(i: int, ev: Event, c: _Choice) -> dict | None:
            if not ev.text and not ev.finished:
                return None
            lp = logprobs_of([ev]) if ev.logprob is not None else None
            return {**base, "choices": [{"index": i, "text": ev.text, "logprobs": lp,
                                         "finish_reason": ev.finish_reason}]}  # fmt: skip

        def final(choices: list[_Choice]) -> dict:
            out = [{"index": i, "text": "".join(c.text), "finish_reason": c.finish_reason,
                    "logprobs": logprobs_of(c.logprobs) if req.logprobs is not None else None}
                   for i, c in enumerate(choices)]  # fmt: skip
            return {**base, "choices": out}

        include = bool(req.stream_options and req.stream_options.include_usage)
        prompt_tokens = sum(len(ids) for ids in id_lists)
        return await run(request, srv, "completions", rid, req, jobs, prompt_tokens, chunk, [], final,
                         lambda u: {**base, "choices": [], "usage": u}, req.stream, include)  # fmt: skip

    @v1.post("/embeddings")
    async def embeddings(req: EmbeddingRequest) -> Any:
        check_model(req.model)
        bos = getattr(tokenizer, "bos_id", None)
        inp = req.input
        if isinstance(inp, str):
            items: list = [inp]
        elif inp and all(isinstance(x, int) for x in inp):
            items = [list(inp)]
        else:
            items = list(inp)
        if not items:
            raise APIError(400, "input is empty", param="input", code="empty_input")
        id_lists = [x if isinstance(x, list) else ([bos] if bos is not None else []) + tokenizer.encode(x)
                    for x in items]  # fmt: skip
        for ids in id_lists:
            check_context(ids, "input")
        vectors = await slot.current.runner.call(lambda eng: eng.embed(id_lists))
        data = []
        for i, vec in enumerate(vectors):
            arr = np.asarray(vec, dtype=np.float32)
            emb: Any = (
                base64.b64encode(arr.tobytes()).decode() if req.encoding_format == "base64" else arr.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(ids) for ids in id_lists)
        metrics.prompt_tokens.inc(n)
        return {
            "object": "list",
            "data": data,
            "model": model_name,
            "usage": {"prompt_tokens": n, "total_tokens": n},
        }

    app.include_router(v1)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Any:
        if slot.current.runner.alive:
            version = slot.current.version
            return {"status": "ready", "model": model_name, **({"version": version} if version else {})}
        return JSONResponse(error_body(503, "the engine is not running"), 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
