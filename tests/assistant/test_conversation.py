"""prepare_chat: the conversation fitted into the context window (oldest turns dropped, system kept),
with the retrieved passages inside the budget; every count checked against the real token ids."""

from __future__ import annotations

import pytest

from fornalha.assistant import prepare_chat
from fornalha.assistant.conversation import GROUNDING
from fornalha.assistant.retrieval import index_folder

SYSTEM = {"role": "system", "content": "You are terse."}


def conversation(n_exchanges: int, size: int = 40) -> list[dict[str, str]]:
    msgs = []
    for i in range(n_exchanges):
        msgs.append({"role": "user", "content": f"question {i} " + "q" * size})
        msgs.append({"role": "assistant", "content": f"answer {i} " + "a" * size})
    return msgs


def test_a_conversation_that_fits_is_untouched(tokenizer):
    msgs = [SYSTEM, *conversation(3), {"role": "user", "content": "and now?"}]
    turn = prepare_chat(msgs, tokenizer, context=2048, reserve=256)
    assert turn.ids == tokenizer.encode_chat(msgs, add_generation_prompt=True)
    assert turn.dropped == 0 and turn.note is None and turn.kept == 7 and turn.sources == []
    assert turn.info() == {"dropped_messages": 0, "kept_messages": 7, "prompt_tokens": len(turn.ids),
                           "context_window": 2048, "note": None}  # fmt: skip


@pytest.mark.parametrize("with_system", [True, False])
@pytest.mark.parametrize("context", [200, 333, 500])
def test_the_oldest_turns_are_dropped_and_the_rest_is_the_most_that_fits(tokenizer, with_system, context):
    history = [*conversation(8), {"role": "user", "content": "the newest question"}]
    msgs = ([SYSTEM] if with_system else []) + history
    reserve = 50
    turn = prepare_chat(msgs, tokenizer, context=context, reserve=reserve)
    budget = context - reserve
    assert len(turn.ids) <= budget
    assert turn.ids == tokenizer.encode_chat(turn.messages, add_generation_prompt=True)
    if with_system:
        assert turn.messages[0] == SYSTEM  # the system prompt is always kept
    kept = turn.messages[1 if with_system else 0 :]
    assert kept[-1] == history[-1]  # and the newest message
    older = history[:-1]
    k = len(kept) - 1
    assert kept[:-1] == older[len(older) - k :] if k else True  # a suffix: only the oldest are dropped
    assert turn.dropped == len(older) - k > 0 and turn.kept == k + 1
    assert k == 0 or kept[0]["role"] == "user"  # never a reply whose question was dropped

    def fits(n: int) -> bool:
        head = [SYSTEM] if with_system else []
        return len(tokenizer.encode_chat(head + older[len(older) - n :] + history[-1:])) <= budget

    longest = max(n for n in range(len(older) + 1) if fits(n))
    assert k == (longest if longest == 0 or older[-longest]["role"] == "user" else longest - 1)
    assert f"{turn.dropped} oldest messages left out" in turn.note and f"{context}-token" in turn.note


def test_a_message_too_long_for_the_window_is_returned_too_long(tokenizer):
    msgs = [SYSTEM, *conversation(2), {"role": "user", "content": "x" * 500}]
    turn = prepare_chat(msgs, tokenizer, context=300, reserve=10)
    assert turn.dropped == 4 and len(turn.ids) > 300  # the caller refuses it (the API: a 400)


@pytest.fixture(scope="module")
def retriever(docs_dir):
    return index_folder(docs_dir)[0]


def test_passages_go_into_the_system_message_and_come_back_as_sources(tokenizer, retriever):
    msgs = [SYSTEM, {"role": "user", "content": "How long should I knead the dough?"}]
    turn = prepare_chat(msgs, tokenizer, context=2048, reserve=256, retriever=retriever, top_k=2)
    assert [h.passage.path for h in turn.sources][:1] == ["kitchen/bread.md"]
    system = turn.messages[0]["content"]
    assert system.startswith(SYSTEM["content"] + "\n\n" + GROUNDING)
    for i, hit in enumerate(turn.sources, start=1):
        assert f"[{i}] {hit.passage.title}: {hit.passage.text}" in system
    assert turn.messages[1:] == msgs[1:]
    assert turn.ids == tokenizer.encode_chat(turn.messages, add_generation_prompt=True)


def test_without_a_system_prompt_the_passages_make_one(tokenizer, retriever):
    turn = prepare_chat([{"role": "user", "content": "tomato sun"}], tokenizer, context=2048,
                        retriever=retriever)  # fmt: skip
    assert turn.messages[0]["role"] == "system" and turn.messages[0]["content"].startswith(GROUNDING)


def test_passages_share_the_room_with_the_history_and_the_last_one_is_cut(tokenizer, retriever):
    question = {"role": "user", "content": "knead the dough, sourdough starter, flour"}
    base = len(tokenizer.encode_chat([SYSTEM, question]))
    context, reserve = base + 600, 40
    msgs = [SYSTEM, *conversation(6), question]
    turn = prepare_chat(msgs, tokenizer, context=context, reserve=reserve, retriever=retriever, top_k=3)
    grounded = len(tokenizer.encode_chat([turn.messages[0], question]))
    assert grounded - base <= (context - reserve - base) // 2  # passages: at most half the room
    assert turn.sources and turn.sources[-1].passage.text.endswith(" …")  # the last one cut to fit
    assert len(turn.ids) <= context - reserve
    assert turn.dropped > 0  # the history got the rest
    alone = prepare_chat([SYSTEM, question], tokenizer, context=context, reserve=reserve, retriever=retriever,
                         top_k=3)  # fmt: skip
    assert len(alone.ids) > len(
        tokenizer.encode_chat([turn.messages[0], question])
    )  # no history: all the room
