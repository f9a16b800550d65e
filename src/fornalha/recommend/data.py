"""Interaction files to item sequences, the leave-one-out split, and the training loader.

Algorithm:
  1. read (user, item, timestamp) rows from MovieTweetings / MovieLens (`user::item::rating::ts`)
     or a CSV with user, item and timestamp columns; ids stay strings (leading zeros matter);
  2. order each user's items by time (ties keep file order), keep a user's first rating of an item;
  3. keep users with at least `min_interactions` items;
  4. item vocabulary: token 0 is padding, items are 1..N (most popular first): the items with at
     least `min_item_interactions` among the kept users (the others are removed from the sequences,
     and users left under `min_interactions` dropped); with `vocab_from` the vocabulary of an
     existing run is used and unknown items are counted and dropped;
  5. cold start (content.py): every other item of the ratings file is *cold*; its id (and title,
     genres) is kept aside, and the users of the file whose history (all but the last item) holds
     only cold items, with at least 2 items, are the *cold users* the content fallback is measured on;
  6. leave-one-out: the last item is the test target, the second-to-last the validation target,
     everything before it is training history.

DATA_DIR/items.json      {"format": "fornalha-items", "items": [id, ...] (token i+1), "titles": {...}, "genres": {...},
                          "cold": [id, ...] (no token; titles and genres of these too)}
DATA_DIR/cold_users.jsonl {"user": id, "items": [item id, ...]} in time order (cold-only history + last item)
DATA_DIR/sequences.jsonl {"user": id, "items": [token, ...]} in time order (whole sequence)
DATA_DIR/manifest.json   counts, the command's settings, dropped rows per reason
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fornalha.errors import DataError

FORMATS = ("movietweetings", "movielens", "csv")
PAD = 0


@dataclass
class RecData:
    """A prepared recommendation data folder in memory."""

    items: list[str]  # items[token - 1] is the item id of token
    titles: dict[str, str]
    genres: dict[str, str]
    users: list[str]
    sequences: list[list[int]]  # token ids in time order, one list per user
    manifest: dict
    cold: list[str] = field(default_factory=list)  # items outside the vocabulary (content fallback)
    cold_users: list[list[str]] = field(default_factory=list)  # item ids in time order, cold-only history

    @property
    def vocab_size(self) -> int:
        return len(self.items) + 1  # + padding

    def token_of(self) -> dict[str, int]:
        return {item: i + 1 for i, item in enumerate(self.items)}


def split_leave_one_out(seq: list[int]) -> tuple[list[int], int, int]:
    """(training history, validation target, test target): the last item is test, the one before validation."""
    if len(seq) < 3:
        raise DataError(f"leave-one-out needs at least 3 items per user, got {len(seq)}")
    return seq[:-2], seq[-2], seq[-1]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_interactions(path: Path, fmt: str) -> list[tuple[str, str, float]]:
    """(user, item, timestamp) rows, in file order."""
    if fmt not in FORMATS:
        raise DataError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not path.is_file():
        raise DataError(f"ratings file {path} not found")
    rows: list[tuple[str, str, float]] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if fmt == "csv":
                reader = csv.DictReader(f)
                cols = {c.lower().strip(): c for c in reader.fieldnames or []}
                need = {}
                for want, options in (("user", ("user", "userid", "user_id")), ("item", ("item", "itemid",
                                      "item_id", "movieid", "movie_id")), ("timestamp", ("timestamp", "ts", "time"))):  # fmt: skip
                    found = next((cols[o] for o in options if o in cols), None)
                    if found is None:
                        raise DataError(f"{path}: no {want} column (columns: {reader.fieldnames})")
                    need[want] = found
                for n, rec in enumerate(reader, start=2):
                    rows.append((rec[need["user"]], rec[need["item"]], _ts(rec[need["timestamp"]], path, n)))
            else:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    parts = line.rstrip("\n").split("::")
                    if len(parts) != 4:
                        raise DataError(
                            f"{path}:{n}: expected user::item::rating::timestamp, got {line[:80]!r}"
                        )
                    rows.append((parts[0], parts[1], _ts(parts[3], path, n)))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from None
    if not rows:
        raise DataError(f"{path} holds no interactions")
    return rows


def _ts(value: str, path: Path, line: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{path}:{line}: timestamp {value!r} is not a number") from None


def read_items(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(titles, genres) from `id::title::genres` (MovieTweetings, MovieLens movies.dat)."""
    if not path.is_file():
        raise DataError(f"items file {path} not found")
    titles, genres = {}, {}
    for enc in ("utf-8", "latin-1"):  # MovieLens-1M's movies.dat is latin-1
        try:
            text = path.read_text(encoding=enc)
            break
        except UnicodeDecodeError:
            continue
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) < 2:
            raise DataError(f"{path}:{n}: expected id::title::genres, got {line[:80]!r}")
        titles[parts[0]] = parts[1]
        genres[parts[0]] = parts[2] if len(parts) > 2 else ""
    return titles, genres


# --------------------------------------------------------------------------------------------
# Preparing a data folder
# --------------------------------------------------------------------------------------------


def prepare(
    ratings: Path,
    out: Path,
    *,
    items_file: Path | None = None,
    fmt: str = "movietweetings",
    min_interactions: int = 5,
    min_item_interactions: int = 1,
    vocab_from: Path | None = None,
) -> dict:
    """Write DATA_DIR (see the module docstring); returns the manifest."""
    if min_interactions < 3:
        raise DataError("--min-interactions must be at least 3 (train, validation and test items)")
    if min_item_interactions < 1:
        raise DataError("--min-item-interactions must be at least 1")
    if out.exists() and any(out.iterdir()) and not _is_recsys_data(out):  # never overwrite others' files
        raise DataError(f"--out {out} exists and is not a recommend data folder; choose another")
    rows = read_interactions(ratings, fmt)
    order = sorted(range(len(rows)), key=lambda i: (rows[i][2], i))  # time, then file order
    by_user: dict[str, list[str]] = {}
    seen_pairs: set[tuple[str, str]] = set()
    repeats = 0
    for i in order:
        user, item, _ = rows[i]
        if (user, item) in seen_pairs:
            repeats += 1
            continue
        seen_pairs.add((user, item))
        by_user.setdefault(user, []).append(item)

    titles, genres = read_items(items_file) if items_file else ({}, {})
    all_items = {it for seq in by_user.values() for it in seq}
    raw = dict(by_user)  # before any item is removed: the cold users are found in it
    dropped_unknown = dropped_rare = 0
    if vocab_from is not None:
        vocab = load_vocab(vocab_from)
        known = set(vocab["items"])
        items = list(vocab["items"])
        titles = titles or vocab.get("titles", {})
        genres = genres or vocab.get("genres", {})
        for user, seq in by_user.items():
            kept = [it for it in seq if it in known]
            dropped_unknown += len(seq) - len(kept)
            by_user[user] = kept
    if vocab_from is None and min_item_interactions > 1:
        counts = Counter(it for s in by_user.values() if len(s) >= min_interactions for it in s)
        for user, seq in by_user.items():
            kept = [it for it in seq if counts[it] >= min_item_interactions]
            dropped_rare += (len(seq) - len(kept)) if len(seq) >= min_interactions else 0
            by_user[user] = kept
    users = sorted((u for u, s in by_user.items() if len(s) >= min_interactions), key=_user_key)
    if not users:
        raise DataError(f"no user has at least {min_interactions} interactions in {ratings}")
    if vocab_from is None:
        counts = Counter(it for u in users for it in by_user[u])
        items = sorted(counts, key=lambda it: (-counts[it], it))
    token = {item: i + 1 for i, item in enumerate(items)}
    cold = sorted(all_items - set(items))
    cold_set = set(cold)
    cold_users = sorted((u for u, s in raw.items() if len(s) >= 2 and all(it in cold_set for it in s[:-1])),
                        key=_user_key)  # fmt: skip

    out.mkdir(parents=True, exist_ok=True)
    kept_items = set(items) | cold_set
    _write_json(out / "items.json", {
        "format": "fornalha-items", "items": items, "cold": cold,
        "titles": {k: v for k, v in titles.items() if k in kept_items},
        "genres": {k: v for k, v in genres.items() if k in kept_items},
    })  # fmt: skip
    with open(out / "cold_users.jsonl", "w") as f:
        for u in cold_users:
            f.write(json.dumps({"user": u, "items": raw[u]}) + "\n")
    with open(out / "sequences.jsonl", "w") as f:
        for u in users:
            f.write(json.dumps({"user": u, "items": [token[it] for it in by_user[u]]}) + "\n")
    n_inter = sum(len(by_user[u]) for u in users)
    manifest = {
        "format": "fornalha-recsys-data", "version": 1, "ratings": str(ratings), "format_in": fmt,
        "items_file": str(items_file) if items_file else None, "min_interactions": min_interactions,
        "min_item_interactions": min_item_interactions, "vocab_from": str(vocab_from) if vocab_from else None,
        "rows": len(rows), "users": len(users), "items": len(items), "interactions": n_inter,
        "dropped": {"repeated_user_item": repeats, "unknown_items": dropped_unknown,
                    "rare_items": dropped_rare, "users_below_min": len(by_user) - len(users)},
        "cold_items": len(cold), "cold_users": len(cold_users),
        "density": n_inter / (len(users) * max(len(items), 1)),
    }  # fmt: skip
    _write_json(out / "manifest.json", manifest)
    return manifest


def _is_recsys_data(path: Path) -> bool:
    man = path / "manifest.json"
    return man.is_file() and json.loads(man.read_text()).get("format") == "fornalha-recsys-data"


def _user_key(u: str) -> tuple[int, str]:
    return (0, f"{int(u):020d}") if u.isdigit() else (1, u)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False) + "\n")
    tmp.replace(path)


def load_vocab(path: Path) -> dict:
    """items.json of a run folder or a data folder."""
    f = Path(path) / "items.json"
    if not f.is_file():
        raise DataError(f"{path} has no items.json (not a recommend run or data folder)")
    return json.loads(f.read_text())


def load_data(data_dir: Path) -> RecData:
    data_dir = Path(data_dir)
    man = data_dir / "manifest.json"
    if not man.is_file() or json.loads(man.read_text()).get("format") != "fornalha-recsys-data":
        raise DataError(
            f"{data_dir} is not a prepared recommend data folder (run `fornalha recommend prepare`)"
        )
    vocab = load_vocab(data_dir)
    users, seqs = [], []
    with open(data_dir / "sequences.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            users.append(rec["user"])
            seqs.append(rec["items"])
    cold_users = []
    if (data_dir / "cold_users.jsonl").is_file():
        with open(data_dir / "cold_users.jsonl") as f:
            cold_users = [json.loads(line)["items"] for line in f if line.strip()]
    return RecData(vocab["items"], vocab.get("titles", {}), vocab.get("genres", {}), users, seqs,
                   json.loads(man.read_text()), vocab.get("cold", []), cold_users)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def pad_right(seqs: list[list[int]], length: int | None = None, value: int = PAD) -> torch.Tensor:
    """[B, L] int64, each row left-aligned and padded on the right (causal attention never looks right)."""
    length = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s[-length:], dtype=torch.long)
    return out


class SequenceLoader:
    """Training batches of item sequences: x = history[:-1], y = history[1:] (-1 where padded).

    Users are visited in a fresh random order every epoch (seeded by seed + epoch); a user's
    sequence is its training history, cut to the last `max_len + 1` items. The position
    (epoch, index) is the whole state, so a resumed run sees exactly the same batches.
    """

    def __init__(self, histories: list[list[int]], batch_size: int, max_len: int, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:  # fmt: skip
        self.histories = [h for h in histories if len(h) >= 2]
        if not self.histories:
            raise DataError("no user has a training history of 2 or more items")
        self.batch_size, self.max_len, self.seed, self.device = batch_size, max_len, seed, device
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng(self.seed + self.epoch).permutation(len(self.histories))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        while len(rows) < self.batch_size:
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            rows.append(self.histories[self._order[self.index]][-(self.max_len + 1) :])
            self.index += 1
        x = pad_right([r[:-1] for r in rows])
        y = pad_right([r[1:] for r in rows], value=-1)
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, d: dict) -> None:
        self.seed, self.epoch, self.index = int(d["seed"]), int(d["epoch"]), int(d["index"])
        self._order = self._permutation()
