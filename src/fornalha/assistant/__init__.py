"""The assistant: grounded answers from the user's documents, and conversations that fit the context.

    documents.py     a folder -> passages (the readers of `fornalha data prepare`)
    retrieval.py     BM25 (bm25s), optionally fused with the model's embeddings -> the top passages
    conversation.py  prepare_chat: one turn's prompt within the context window, passages included,
                     the oldest messages dropped when it no longer fits (API, chat page, `fornalha chat`)

Used by `fornalha serve --docs` and `fornalha chat --docs`; see docs/assistant.md.
"""

from fornalha.assistant.conversation import PreparedChat, default_reserve, prepare_chat
from fornalha.assistant.documents import Passage, read_passages, split_passages
from fornalha.assistant.retrieval import Hit, Retriever, engine_embedder

__all__ = [
    "Hit",
    "Passage",
    "PreparedChat",
    "Retriever",
    "default_reserve",
    "engine_embedder",
    "prepare_chat",
    "read_passages",
    "split_passages",
]
