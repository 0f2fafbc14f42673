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
    def __init__(self, run_dir: Path, config: dict, resumed_records: list[dict] | None = None):
        """A new run directory, or (with `resumed_records`) an existing one whose metrics.jsonl is
        rewritten to exactly those records, dropping a partly written last line."""
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resumed_records is None:
            self.run_dir.mkdir(parents=True, exist_ok=False)
            write_atomic(self.run_dir / "config.json", json.dumps(config, indent=2))
        else:
            write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in resumed_records))
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
    out["es/reward_timeouts"] = record.get("reward_timeouts", 0)
    out["es/engine_restarts"] = record.get("engine_restarts", 0)
    out.update({f"eval/{k}": v for k, v in record.get("eval", {}).items() if v is not None and k != "samples"})
    out["es/mean_completion_tokens"] = record["mean_completion_tokens"]
    return out


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of metrics.jsonl in order; a partly written last line (a killed run) is dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record["iteration"] != len(records):
            raise ValueError(f"{path}: iteration {record['iteration']} follows {len(records) - 1}")
        records.append(record)
    return records


def write_atomic(path: Path, text: str) -> None:
    """Readers (tools, tests) see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="member", leave=False, disable=not enabled, dynamic_ncols=True)


def summary_line(r: dict, total: int) -> str:
    """The console's one line per iteration."""
    comps = " ".join(f"{k}={v:.3f}" for k, v in r["components"].items())
    evals = " | eval " + " ".join(f"{k}={v:.3f}" for k, v in r["eval"].items()
                                  if isinstance(v, float)) if "eval" in r else ""
    return (f"iter {r['iteration'] + 1}/{total} reward {r['reward_mean']:.4f} ± {r['reward_std']:.4f} "
            f"[{r['reward_min']:.3f}, {r['reward_max']:.3f}] {comps} | {r['time']['iteration_s']:.1f}s "
            f"{r['tokens_per_s']:.0f} tok/s | update norm {r['update_norm']:.3g}{evals}")
