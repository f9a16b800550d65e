"""Chat data: every shape and file format becomes conversations; bad records are counted with their
line; the held-out split is by question group; the loss mask covers exactly the assistant tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fornalha.errors import DataError
from fornalha.finetune.chat_data import (
    read_chat_data,
    render_with_mask,
    split_examples,
)
from fornalha.tokenizer.char import CharTokenizer
from fornalha.tokenizer.chat import SPECIAL_IDS

QA = {"prompt": "Qual é o seu nome?", "completion": "Sou a Aira.", "answer_id": 1}
MESSAGES = {
    "message_tree_id": "t1",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye?"},
        {"role": "assistant", "content": "Bye."},
    ],
}
SELF_INSTRUCT = {
    "id": "seed_task_0",
    "instruction": "Add the numbers.",
    "instances": [{"input": "1 2", "output": "3"}, {"input": "", "output": "nothing"}],
}
ALPACA = {"instruction": "Say hi.", "input": "", "output": "hi"}
SHAREGPT = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
OASST_TREE = {
    "message_tree_id": "tree-9",
    "prompt": {
        "text": "Root question?",
        "role": "prompter",
        "replies": [
            {"text": "second best", "role": "assistant", "rank": 1, "replies": []},
            {"text": "deleted", "role": "assistant", "rank": 0, "deleted": True, "replies": []},
            {
                "text": "best answer",
                "role": "assistant",
                "rank": 0,
                "replies": [{"text": "follow-up?", "role": "prompter", "replies": []}],
            },
        ],
    },
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_every_shape_becomes_conversations(tmp_path):
    f = write_jsonl(tmp_path / "mix.jsonl", [QA, MESSAGES, SELF_INSTRUCT, ALPACA, SHAREGPT, OASST_TREE])
    data = read_chat_data([f])
    assert not data.skipped
    convs = [e.messages for e in data.examples]
    assert convs[0] == [
        {"role": "user", "content": "Qual é o seu nome?"},
        {"role": "assistant", "content": "Sou a Aira."},
    ]
    assert convs[1] == MESSAGES["messages"]
    # self-instruct: one conversation per instance, the input after the instruction
    assert convs[2][0]["content"] == "Add the numbers.\n\n1 2" and convs[2][1]["content"] == "3"
    assert convs[3][0]["content"] == "Add the numbers." and convs[3][1]["content"] == "nothing"
    assert convs[4] == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]
    assert convs[5] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    # oasst tree: the best-ranked, non-deleted path; the trailing user turn is dropped
    assert convs[6] == [
        {"role": "user", "content": "Root question?"},
        {"role": "assistant", "content": "best answer"},
    ]
    groups = [e.group for e in data.examples]
    assert groups[0] == "answer:1" and groups[1] == "t1" and groups[6] == "tree-9"
    assert [e.source for e in data.examples][:4] == [
        "mix.jsonl:1",
        "mix.jsonl:2",
        "mix.jsonl:3",
        "mix.jsonl:3#1",
    ]


def test_bad_records_are_skipped_with_their_line_numbers(tmp_path):
    rows = [
        QA,
        "{not json",
        {"text": "no known shape"},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"prompt": 3, "completion": "x"},
        {"messages": [{"role": "wizard", "content": "?"}]},
        QA,
    ]
    data = read_chat_data([write_jsonl(tmp_path / "bad.jsonl", rows)])
    assert len(data.examples) == 2
    assert [w for w, _ in data.skipped] == [
        "bad.jsonl:2",
        "bad.jsonl:3",
        "bad.jsonl:4",
        "bad.jsonl:5",
        "bad.jsonl:6",
    ]
    reasons = dict(data.skipped)
    assert "JSON" in reasons["bad.jsonl:2"] and "unknown record shape" in reasons["bad.jsonl:3"]
    assert "no assistant reply" in reasons["bad.jsonl:4"] and "string" in reasons["bad.jsonl:5"]
    assert "5 bad records skipped" in data.summary()


def test_nothing_usable_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no usable conversation.*bad.jsonl:1"):
        read_chat_data([write_jsonl(tmp_path / "bad.jsonl", [{"x": 1}])])
    with pytest.raises(DataError, match="does not exist"):
        read_chat_data([tmp_path / "missing.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no"):
        read_chat_data([tmp_path / "empty"])


def test_parquet_json_and_hf_dataset_folder_read_the_same(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [QA, {**QA, "prompt": "Outra?", "answer_id": 2}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    (tmp_path / "qa.json").write_text(json.dumps(rows))
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list([MESSAGES]).save_to_disk(str(tmp_path / "hf" / "chat"))

    assert [e.messages for e in read_chat_data([tmp_path / "qa.parquet"]).examples] == [
        e.messages for e in read_chat_data([tmp_path / "qa.json"]).examples
    ]
    folder = read_chat_data([tmp_path])  # a folder: every file in it, the dataset folder whole
    assert len(folder.files) == 3 and len(folder.examples) == 5
    assert [e.messages for e in read_chat_data([tmp_path / "hf" / "chat"]).examples] == [MESSAGES["messages"]]


def test_every_shared_sft_file_reads_without_bad_records(shared_data):
    sft = shared_data / "sft"
    counts = {p.name: len(read_chat_data([p]).examples) for p in sorted(sft.glob("*.jsonl"))}
    assert counts == {
        "aira1_qa_pt.jsonl": 4289,
        "oasst1_en_100_sft.jsonl": 249,
        "oasst1_en_100_trees.jsonl": 95,  # 5 trees have only synthetic or deleted replies
        "self_instruct_seed_tasks.jsonl": 175,
        "self_instruct_user_oriented_instructions.jsonl": 252
        + sum(
            len(json.loads(line)["instances"]) - 1
            for line in (sft / "self_instruct_user_oriented_instructions.jsonl").open()
        ),
    }
    for p in sft.glob("*.jsonl"):
        skipped = read_chat_data([p]).skipped
        if p.name == "oasst1_en_100_trees.jsonl":
            assert len(skipped) == 5 and all("no assistant reply" in why for _, why in skipped)
        else:
            assert not skipped, p


def test_split_is_deterministic_and_keeps_groups_together(shared_data):
    data = read_chat_data([shared_data / "sft" / "aira1_qa_pt.jsonl"])
    train, held = split_examples(data.examples, 0.1, seed=0)
    again_train, again_held = split_examples(data.examples, 0.1, seed=0)
    assert [e.source for e in held] == [e.source for e in again_held] and len(again_train) == len(train)
    # paraphrases of one question share an answer: none of the held-out answers is ever trained on
    assert not {e.group for e in train} & {e.group for e in held}
    answers = {e.messages[-1]["content"] for e in train}
    assert not any(e.messages[-1]["content"] in answers for e in held)
    assert 0.03 < len(held) / len(data.examples) < 0.25
    _, other = split_examples(data.examples, 0.1, seed=1)
    assert {e.source for e in other} != {e.source for e in held}


def test_mask_is_exactly_the_assistant_tokens_and_their_end():
    tok = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz ?. HB"])
    messages = MESSAGES["messages"]
    ids, mask = render_with_mask(tok, messages)
    end, asst = SPECIAL_IDS["<|end|>"], SPECIAL_IDS["<|assistant|>"]
    # walk the rendering token by token: each role token opens a turn that <|end|> closes
    expected_ids, expected_mask = [SPECIAL_IDS["<|bos|>"]], [0]
    for m in messages:
        body = tok.encode(m["content"])
        learn = int(m["role"] == "assistant")
        expected_ids += [SPECIAL_IDS[f"<|{m['role']}|>"], *body, end]
        expected_mask += [0] + [learn] * (len(body) + 1)
    assert ids == expected_ids and mask == expected_mask
    trained = [i for i, m in zip(ids, mask) if m]
    assert tok.decode([i for i in trained if i != end]) == "Hello.Bye."
    assert trained.count(end) == 2 and asst not in trained


def test_mask_with_a_foreign_chat_template(tmp_path):
    """An imported model's own template (ChatML here): the learned tokens are each reply plus its
    <|im_end|> and newline; the prompt pieces encode exactly as the inference prompt does."""
    pytest.importorskip("transformers")
    from fornalha.tokenizer import HFTokenizer
    from hf_helpers import byte_level_tokenizer

    byte_level_tokenizer(tmp_path / "tok", ["Hi? Hello. Bye? Bye. Be brief."] * 20, vocab_size=300)
    tok = HFTokenizer.load(tmp_path / "tok")
    messages = MESSAGES["messages"]
    ids, mask = render_with_mask(tok, messages)
    assert tok.decode(ids) == tok.render_chat(messages, add_generation_prompt=False)
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned == "Hello.<|im_end|>\nBye.<|im_end|>\n"
    first_reply = mask.index(1)
    assert ids[:first_reply] == tok.encode_chat(messages[:2], add_generation_prompt=True)
