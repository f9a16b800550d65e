"""Talk to a fornalha assistant over HTTP with the official `openai` client, and nothing else.

    fornalha serve --run runs/assistant --docs notes/          # in one terminal
    python examples/assistant_client.py "How do I bake bread?" "And how long should it rise?"

What it does, in the order an application would:

1. ``client.models.list()``: the name of the served model.
2. The first question as a plain chat completion. The answer carries two fornalha extension fields
   that the `openai` client keeps as extra attributes: ``sources`` (the passages of your documents
   the prompt quoted, with ``--docs``) and ``conversation`` (how many old messages were dropped to fit
   the context window, and a note saying so).
3. Each further question *streamed*, with the whole conversation so far: the text is printed as it
   arrives, and the last chunk carries the same two fields.
4. A rating of the last answer, ``POST /v1/feedback`` with the completion's ``id``, sent through the
   same client (``client.post``), so it uses its base URL, API key and retries.

The last line printed is one JSON object with the answers, their ids, sources and the feedback reply.
The API key comes from ``--api-key`` or ``OPENAI_API_KEY`` (a server without keys accepts any).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import openai


def extra(obj: object, name: str) -> object:
    """A field the OpenAI schema does not know (fornalha's ``sources``, ``conversation``), or None."""
    return (getattr(obj, "model_extra", None) or {}).get(name)


def show_sources(sources: object) -> None:
    for i, s in enumerate(sources or [], start=1):
        print(f"  [{i}] {s['title']} ({s['path']}, score {s['score']:.3g})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", nargs="*", default=["What is in my documents?", "Tell me more."])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "none"))
    parser.add_argument("--model", help="default: the first model the server lists")
    parser.add_argument("--system", default="You are a helpful assistant. Answer from the user's documents.")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument(
        "--rating", type=int, choices=(1, -1), default=1, help="the rating of the last answer"
    )
    parser.add_argument("--comment", default="rated by examples/assistant_client.py")
    args = parser.parse_args(argv)

    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
    model = args.model or client.models.list().data[0].id
    print(f"model: {model}")
    messages = [{"role": "system", "content": args.system}]
    turns = []

    for n, question in enumerate(args.questions):
        messages.append({"role": "user", "content": question})
        print(f"\nyou: {question}\nassistant: ", end="", flush=True)
        kw = dict(model=model, messages=messages, max_tokens=args.max_tokens, temperature=args.temperature)
        if n == 0:  # 2. one plain completion
            completion = client.chat.completions.create(**kw)
            answer, cid = completion.choices[0].message.content or "", completion.id
            sources, conversation = extra(completion, "sources"), extra(completion, "conversation")
            print(answer)
        else:  # 3. streamed, chunk by chunk
            pieces: list[str] = []
            sources = conversation = cid = None
            for chunk in client.chat.completions.create(**kw, stream=True):
                cid = chunk.id
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    print(chunk.choices[0].delta.content, end="", flush=True)
                sources = extra(chunk, "sources") or sources  # on the last chunk
                conversation = extra(chunk, "conversation") or conversation
            answer = "".join(pieces)
            print()
        show_sources(sources)
        if conversation and conversation.get("note"):
            print(f"  ({conversation['note']})")
        messages.append({"role": "assistant", "content": answer})
        turns.append({"question": question, "answer": answer, "id": cid, "sources": sources,
                      "conversation": conversation})  # fmt: skip

    # 4. feedback on the last answer, through the same client
    feedback = client.post(
        "/feedback",
        body={"completion_id": turns[-1]["id"], "rating": args.rating, "comment": args.comment},
        cast_to=object,
    )
    print(f"\nfeedback saved: {feedback}")
    print(json.dumps({"model": model, "turns": turns, "feedback": feedback}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except openai.APIError as exc:  # one line, not a traceback: the server said no, or is not there
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
