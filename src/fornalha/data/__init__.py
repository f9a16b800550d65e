"""The data stage: collect text from many sources, clean it, and write a dataset folder.

Modules, in the order data flows through them:

- :mod:`.sources`  — parse ``--source`` specs and stream documents (files, hf:, URLs, builtin:)
- :mod:`.clean`    — decoding, normalisation, Gopher-style quality and language filters
- :mod:`.pii`      — e-mail / phone / IP / card scrubbing
- :mod:`.dedup`    — exact and MinHash-LSH near-duplicate detection
- :mod:`.split`    — deterministic, leak-free train/validation split
- :mod:`.prepare`  — the orchestrator behind ``fornalha data prepare``
- :mod:`.dataset`  — readers for the output folder, used by later stages

Heavy modules are imported lazily; ``import fornalha.data`` stays cheap.
"""

from fornalha.data.dataset import is_dataset_dir, iter_texts, load_manifest, split_bytes

__all__ = ["is_dataset_dir", "iter_texts", "load_manifest", "split_bytes"]
