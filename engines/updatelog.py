"""The update log: every iteration's (seed, coefficient) pairs, in order, in RUN/updates.jsonl.

It is the run's durable state: any process rebuilds the weights from the starting checkpoint by
replaying the entries after it (`apply_update` on an engine), and a resumed run continues at
iteration `len(log)`. One JSON line per iteration, appended and fsynced when the iteration is
committed (after its metrics line), so a run killed at any moment leaves a log of whole
iterations; a torn last line is dropped. metrics.jsonl is for people and plots; nothing is rebuilt
from it.

    {"iteration": 3, "pairs": [[1839201, 1.2e-05], ...], "options": {...}}
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FILE = "updates.jsonl"

Pairs = list[tuple[int, float]]


class UpdateLog:
    def __init__(self, path: Path | None = None, entries: list[dict] | None = None):
        self.path = Path(path) if path else None
        self.entries: list[dict] = list(entries or [])
        self.committed = len(self.entries)

    @classmethod
    def create(cls, run_dir: Path) -> "UpdateLog":
        path = Path(run_dir) / FILE
        path.touch(exist_ok=False)
        return cls(path)

    @classmethod
    def load(cls, run_dir: Path) -> "UpdateLog":
        """The whole iterations logged in RUN/updates.jsonl; a torn last line is cut off the file."""
        path = Path(run_dir) / FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no update log, so the run cannot be resumed (runs started by "
                                    "esvllm before updates.jsonl existed resume only with that version)")
        entries, good_bytes = [], 0
        with open(path, "rb") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    break
                if not line.endswith(b"\n"):
                    break
                if entry.get("iteration") != len(entries):
                    raise ValueError(f"{path}: iteration {entry.get('iteration')} follows {len(entries) - 1}")
                entries.append(entry)
                good_bytes += len(line)
        if good_bytes != path.stat().st_size:
            os.truncate(path, good_bytes)
        return cls(path, entries)

    def __len__(self) -> int:
        return len(self.entries)

    def pairs(self, start: int = 0, stop: int | None = None) -> list[tuple[Pairs, dict]]:
        """(pairs, options) of entries [start, stop), as engines replay them."""
        return [([(int(s), float(c)) for s, c in e["pairs"]], e.get("options") or {})
                for e in self.entries[start:stop]]

    def append(self, pairs: Pairs, options: dict | None = None) -> None:
        """Record an iteration in memory (engines apply it next); `commit` makes it durable."""
        entry = {"iteration": len(self.entries), "pairs": [[int(s), float(c)] for s, c in pairs]}
        if options:
            entry["options"] = options
        self.entries.append(entry)

    def commit(self) -> None:
        """Append the uncommitted entries to the file, fsynced."""
        if self.path is None or self.committed == len(self.entries):
            self.committed = len(self.entries)
            return
        with open(self.path, "a") as f:
            for entry in self.entries[self.committed :]:
                f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.committed = len(self.entries)
