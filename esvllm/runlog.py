"""What a run leaves on disk: config.json, metrics.jsonl and TensorBoard events. Only the coordinator writes."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path


def run_dir_name(experiment: str, model: str, seed: int) -> str:
    model_tag = re.sub(r"[^A-Za-z0-9._-]", "_", Path(model.rstrip("/")).name)
    return f"{experiment}__{model_tag}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


class RunLog:
    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=False)
        _write_atomic(self.run_dir / "config.json", json.dumps(config, indent=2))
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.writer = SummaryWriter(log_dir=str(self.run_dir))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        step = record["iteration"]
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def scalars(record: dict) -> dict[str, float]:
    """TensorBoard tags of one metrics record, grouped reward/, time/, throughput/, es/."""
    out = {f"reward/{k}": record[f"reward_{k}"] for k in ("mean", "std", "min", "max")}
    out.update({f"reward/{k}": v for k, v in record.get("components", {}).items()})
    out.update({f"time/{k}": v for k, v in record["time"].items()})
    out["throughput/tokens_per_s"] = record["tokens_per_s"]
    out["es/update_norm"] = record["update_norm"]
    out["es/reward_errors"] = record["reward_errors"]
    out["es/mean_completion_tokens"] = record["mean_completion_tokens"]
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
