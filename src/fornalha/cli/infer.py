"""`fornalha generate` and `fornalha chat`: thin commands over `fornalha.infer.Engine`.

Generated text goes to stdout and nothing else does; device notes, progress and errors go to
stderr, so `fornalha generate … > out.txt` captures exactly the text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fornalha.errors import ConfigError, FornalhaError

RunOpt = Annotated[
    Path, typer.Option("--run", help="Run folder from `fornalha train` (or `fornalha import hf`).")
]
CheckpointOpt = Annotated[
    str, typer.Option("--checkpoint", help="best, last, or a step folder name such as step-000200.")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (cuda -> mps -> cpu), cpu, cuda, cuda:1, mps.")
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="auto (bfloat16 on CUDA, else float32), float32, bfloat16 or float16.")
]
KvCacheOpt = Annotated[
    str,
    typer.Option(
        "--kv-cache",
        help="KV-cache storage: auto (fp16 + a compiled kernel on CPUs, else the model's dtype), fp16, "
        "or model (the model's dtype).",
    ),
]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load_engine(
    run: Path,
    checkpoint: str,
    device: str,
    dtype: str,
    max_batch_size: int,
    compile: bool = False,
    kv_cache: str = "auto",
    prefix_caching: bool = False,
):
    """(engine, tokenizer) for a run folder, on the requested device and precision."""
    import torch

    from fornalha.checkpoint import load_run
    from fornalha.device import pick_device
    from fornalha.infer import Engine

    if not run.exists():
        raise FornalhaError(f"run folder {run} does not exist; train one with `fornalha train` or pass --run")
    dev = pick_device(device)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    elif dtype in dtypes:
        dt = dtypes[dtype]
    else:
        raise ConfigError(f"unknown --dtype {dtype!r}; choose auto, {', '.join(dtypes)}")
    kv_choices = {"auto": "auto", "fp16": "fp16", "model": None}
    if kv_cache not in kv_choices:
        raise ConfigError(f"unknown --kv-cache {kv_cache!r}; choose auto, fp16 or model")
    model, tokenizer, meta = load_run(run, which=checkpoint, device=dev)
    engine = Engine(
        model,
        tokenizer,
        prefix_caching=prefix_caching,
        device=dev,
        dtype=dt,
        max_batch_size=max_batch_size,
        compile=compile,
        kv_cache=kv_choices[kv_cache],
    )
    _say(
        f"model: {meta.get('path', run)} ({model.num_params() / 1e6:.1f}M parameters, {str(dt).split('.')[-1]}; "
        f"decode weights {engine.decode_weights or 'as the model'}, KV cache {engine.kv_cache or 'as the model'})"
    )
    return engine, tokenizer


DocsOpt = Annotated[
    Path | None,
    typer.Option(
        "--docs",
        help="Folder of documents (read like `data prepare` reads): each turn quotes the best passages "
        "and lists them as sources.",
    ),
]
DocsTopKOpt = Annotated[int, typer.Option("--docs-top-k", help="Passages quoted per turn at most.")]
RetrievalOpt = Annotated[
    str,
    typer.Option(
        "--retrieval", help="bm25, or hybrid (BM25 fused with the model's embeddings by reciprocal rank)."
    ),
]


def _read_docs(docs: Path | None, retrieval: str, top_k: int):
    """The passages of --docs (None without it), read before the model loads so that a bad folder
    fails at once; checks --retrieval and --docs-top-k."""
    if retrieval not in ("bm25", "hybrid"):
        raise ConfigError(f"unknown --retrieval {retrieval!r}; choose bm25 or hybrid")
    if top_k < 1:
        raise ConfigError(f"--docs-top-k must be >= 1, got {top_k}")
    if docs is None:
        return None
    from fornalha.assistant import read_passages

    passages, skipped = read_passages(docs)
    files = len({p.path for p in passages})
    _say(f"docs: {len(passages)} passages from {files} document(s) in {docs} ({retrieval})")
    if skipped:
        reasons = sorted({s.reason for s in skipped})
        _say(f"docs: skipped {len(skipped)} unreadable file(s) or record(s): {'; '.join(reasons)}")
    return passages


def _docs_retriever(passages, retrieval: str, engine, tokenizer):
    """The `fornalha.assistant.Retriever` over the passages (None without --docs)."""
    if passages is None:
        return None
    from fornalha.assistant import Retriever, engine_embedder

    embed = engine_embedder(engine, tokenizer) if retrieval == "hybrid" else None
    return Retriever(passages, embed=embed)


def _params(**kw: Any):
    from fornalha.infer import SamplingParams

    return SamplingParams(**{k: v for k, v in kw.items() if v is not None})


def generate_command(
    run: RunOpt,
    prompt: Annotated[str | None, typer.Option("--prompt", "-p", help="The text to continue.")] = None,
    prompts_file: Annotated[
        Path | None,
        typer.Option(
            "--prompts-file",
            help='JSONL, one {"prompt": ...} per line (optionally with its own sampling parameters, '
            'e.g. "temperature", "max_new_tokens", "seed", "stop"); writes one JSON line per prompt.',
        ),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Tokens to generate at most.")
    ] = 128,
    temperature: Annotated[
        float, typer.Option("--temperature", "-t", help="0 = greedy; higher = more random.")
    ] = 0.8,
    top_k: Annotated[
        int, typer.Option("--top-k", help="Sample among the k most likely tokens (0 = off).")
    ] = 0,
    top_p: Annotated[
        float, typer.Option("--top-p", help="Nucleus sampling: smallest set with this mass (1 = off).")
    ] = 1.0,
    min_p: Annotated[
        float, typer.Option("--min-p", help="Drop tokens below min_p x the best one's probability.")
    ] = 0.0,
    repetition_penalty: Annotated[
        float, typer.Option("--repetition-penalty", help="> 1 discourages tokens already present (1 = off).")
    ] = 1.0,
    frequency_penalty: Annotated[
        float, typer.Option("--frequency-penalty", help="Per repeat, OpenAI-style.")
    ] = 0.0,
    presence_penalty: Annotated[float, typer.Option("--presence-penalty", help="Once per used token.")] = 0.0,
    seed: Annotated[int | None, typer.Option("--seed", help="Makes sampling reproducible.")] = None,
    stream: Annotated[bool, typer.Option("--stream", help="Print text as it is generated.")] = False,
    n: Annotated[int, typer.Option("--n", help="Samples per prompt (sample i uses seed + i).")] = 1,
    stop: Annotated[
        list[str] | None, typer.Option("--stop", help="Stop before this string (repeatable).")
    ] = None,
    checkpoint: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences decoded together.")] = 8,
    kv_cache: KvCacheOpt = "auto",
) -> None:
    """Continue a prompt with a trained model; prints only the generated text.

    Examples:

      fornalha generate --run runs/tiny --prompt "Once upon a time" --temperature 0

      fornalha generate --run runs/tiny -p "The king" --top-p 0.9 --seed 1 --n 3 --stream

      fornalha generate --run runs/tiny --prompts-file prompts.jsonl > outputs.jsonl
    """
    if (prompt is None) == (prompts_file is None):
        raise ConfigError("give exactly one of --prompt or --prompts-file")
    if stream and (n > 1 or prompts_file is not None):
        raise ConfigError("--stream prints one sample of one prompt; drop --n/--prompts-file or --stream")
    base = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        seed=seed,
        n=n,
        stop=list(stop or []),
    )
    params = _params(**base)  # validate before loading anything

    if prompts_file is not None:
        from fornalha.infer import SamplingParams
        from fornalha.jsonl import read_objects

        prompts, plist = [], []
        for lineno, obj in read_objects(prompts_file, what="prompts file", items="prompts"):
            if not isinstance(obj.get("prompt"), str):
                raise FornalhaError(f'{prompts_file}, line {lineno}: expected {{"prompt": "...", ...}}')
            prompts.append(obj.pop("prompt"))
            try:
                plist.append(SamplingParams.from_dict({**base, **obj}))
            except ConfigError as exc:
                raise ConfigError(f"{prompts_file}, line {lineno}: {exc}") from None
        engine, _ = _load_engine(run, checkpoint, device, dtype, batch_size, kv_cache=kv_cache)
        for i, res in enumerate(engine.generate(prompts, plist)):
            out = {
                "index": i,
                "prompt": res.prompt,
                "text": res.text,
                "finish_reason": res.completions[0].finish_reason,
                "tokens": len(res.completions[0].token_ids),
            }
            if len(res.completions) > 1:
                out["completions"] = [
                    {"text": c.text, "finish_reason": c.finish_reason, "tokens": len(c.token_ids)}
                    for c in res.completions
                ]
            print(json.dumps(out, ensure_ascii=False), flush=True)
        return

    assert prompt is not None
    engine, _ = _load_engine(run, checkpoint, device, dtype, batch_size, kv_cache=kv_cache)
    if stream:
        for piece in engine.stream(prompt, params):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    res = engine.generate([prompt], params)[0]
    print("\n\n".join(c.text for c in res.completions))


def chat_command(
    run: RunOpt,
    system: Annotated[
        str | None, typer.Option("--system", help="System prompt for the conversation.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest reply, in tokens.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy.")] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling mass (1 = off).")] = 0.9,
    top_k: Annotated[int, typer.Option("--top-k", help="0 = off.")] = 0,
    repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", help="1 = off.")] = 1.1,
    seed: Annotated[int | None, typer.Option("--seed", help="Reply i uses seed + i.")] = None,
    checkpoint: CheckpointOpt = "best",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    kv_cache: KvCacheOpt = "auto",
    docs: DocsOpt = None,
    docs_top_k: DocsTopKOpt = 3,
    retrieval: RetrievalOpt = "bm25",
) -> None:
    """Chat with a model in the terminal, replies streamed as they are written.

    Type a message and press Enter. Commands: /reset (forget the conversation), /save FILE (write
    the transcript as JSON), /exit. Works with piped input too (one message per line). When the
    conversation outgrows the context window the oldest messages are dropped, and a line says so.
    With --docs, each turn quotes the best passages of your documents and lists them after the reply.

      fornalha chat --run runs/sft --system "You are a helpful assistant."

      fornalha chat --run runs/sft --docs notes/

      printf 'Hello!\\nWhat is a tokenizer?\\n/save chat.json\\n' | fornalha chat --run runs/sft
    """
    params = _params(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
    )
    from fornalha.assistant import default_reserve, prepare_chat

    passages = _read_docs(docs, retrieval, docs_top_k)
    engine, tokenizer = _load_engine(run, checkpoint, device, dtype, max_batch_size=1, kv_cache=kv_cache)
    if not hasattr(tokenizer, "encode_chat"):
        raise FornalhaError("this run's tokenizer has no chat template (encode_chat)")
    retriever = _docs_retriever(passages, retrieval, engine, tokenizer)
    reserve = default_reserve(engine.max_seq_len, max_new_tokens)
    interactive = sys.stdin.isatty()
    history: list[dict[str, str]] = []

    def messages() -> list[dict[str, str]]:
        return ([{"role": "system", "content": system}] if system else []) + history

    if interactive:
        _say("chat: /reset, /save FILE, /exit  (Ctrl-D quits)")
    turn = 0
    while True:
        if interactive:
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        text = line.rstrip("\n").rstrip("\r")
        if not text.strip():
            continue
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            history.clear()
            _say("(conversation reset)")
            continue
        if text.startswith("/save"):
            target = text[len("/save") :].strip()
            if not target:
                _say("usage: /save FILE")
                continue
            transcript = {"run": str(run), "system": system, "messages": messages(), "params": vars(params)}
            try:
                Path(target).write_text(
                    json.dumps(transcript, ensure_ascii=False, indent=2), encoding="utf-8"
                )
            except OSError as exc:
                _say(f"cannot save to {target}: {exc}")
                continue
            _say(f"(saved {len(messages())} messages to {target})")
            continue
        if text.startswith("/"):
            _say(f"unknown command {text.split()[0]}; commands: /reset, /save FILE, /exit")
            continue

        history.append({"role": "user", "content": text})
        prepared = prepare_chat(messages(), tokenizer, context=engine.max_seq_len, reserve=reserve,
                                retriever=retriever, top_k=docs_top_k)  # fmt: skip
        if len(prepared.ids) >= engine.max_seq_len:
            history.pop()
            _say(f"that message alone is longer than the model's context ({engine.max_seq_len} tokens)")
            continue
        if prepared.dropped:
            del history[: prepared.dropped]
            _say(f"({prepared.note})")
        ids = prepared.ids
        turn_params = params.with_(seed=None if seed is None else seed + turn)
        turn += 1
        if interactive:
            sys.stderr.write("assistant> ")
            sys.stderr.flush()
        reply = []
        for piece in engine.stream(ids, turn_params, add_bos=False):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})
        for i, hit in enumerate(prepared.sources, start=1):
            _say(f"  [{i}] {hit.passage.id} (score {hit.score:.3g}): {hit.passage.text[:100]}")


def register(app: typer.Typer) -> None:
    """Add `generate` and `chat` to the main app."""
    app.command("generate", no_args_is_help=True)(generate_command)
    app.command("chat", no_args_is_help=True)(chat_command)
