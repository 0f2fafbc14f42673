"""What a run leaves on disk: config.json, metrics.jsonl and TensorBoard events (and Weights & Biases,
with --wandb_project). Only the coordinator writes."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from pathlib import Path


def run_dir_name(experiment: str, model: str, seed: int) -> str:
    model_tag = re.sub(r"[^A-Za-z0-9._-]", "_", Path(model.rstrip("/")).name)
    return f"{experiment}__{model_tag}__{seed}__{time.strftime('%Y%m%d-%H%M%S')}"


class WandbLog:
    """The same scalars and config in a Weights & Biases run, resumed with its run directory."""

    def __init__(self, project: str, run_dir: Path, config: dict):
        try:
            import wandb
        except ImportError:
            raise ImportError("--wandb_project needs Weights & Biases: pip install wandb (or .[wandb])") from None
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        self.run = wandb.init(project=project, name=run_dir.name, id=run_id, resume="allow", config=config,
                              dir=str(run_dir))
        self.run.define_metric("iteration")
        self.run.define_metric("updates")
        for prefix in ("reward", "time", "throughput", "es"):
            self.run.define_metric(f"{prefix}/*", step_metric="iteration")
        self.run.define_metric("eval/*", step_metric="updates")

    def log(self, values: dict) -> None:
        self.run.log(values)

    def close(self) -> None:
        self.run.finish()


class NoTensorBoard:
    """Stands in for SummaryWriter where tensorboard is not installed (metrics.jsonl has everything)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # a declared dependency; a bare GPU image may still lack it
        logging.getLogger(__name__).warning("no TensorBoard logs (%s): pip install tensorboard; metrics.jsonl "
                                            "has every figure", exc)
        return NoTensorBoard()
    return SummaryWriter(log_dir=str(run_dir))


class RunLog:
    def __init__(self, run_dir: Path, config: dict, resumed_records: list[dict] | None = None,
                 wandb_project: str | None = None):
        """A new run directory, or (with `resumed_records`) an existing one whose metrics.jsonl is
        rewritten to exactly those records, dropping a partly written last line."""
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resumed_records is None:
            self.run_dir.mkdir(parents=True, exist_ok=False)
            write_atomic(self.run_dir / "config.json", json.dumps(config, indent=2))
        else:
            write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in resumed_records))
        self.writer = tensorboard_writer(self.run_dir)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)
        self.wandb = WandbLog(wandb_project, self.run_dir, config) if wandb_project else None

    def log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        step = record["iteration"]
        values = scalars(record)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()
        if self.wandb:
            self.wandb.log({"iteration": step, **values})

    def log_eval(self, iteration: int, summary: dict) -> None:
        """eval/<metric> (one set) or eval/<set>/<metric> at the number of updates applied (0: the base model)."""
        sets = {"": summary} if "reward" in summary else summary
        values = {f"eval/{name}/{key}" if name else f"eval/{key}": value for name, metrics in sets.items()
                  for key, value in metrics.items() if isinstance(value, (int, float)) and key != "samples"}
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, iteration)
        self.writer.flush()
        if self.wandb:
            self.wandb.log({"updates": iteration, **values})

    def close(self) -> None:
        self.writer.close()
        if self.wandb:
            self.wandb.close()


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


def say(progress: bool, line: str) -> None:
    """A console line: above the progress bar when there is one, else to the log."""
    if progress:
        from tqdm import tqdm

        tqdm.write(line)
    else:
        import logging

        logging.getLogger("esvllm").info(line)


def eval_line(iteration: int, summary: dict) -> str:
    sets = {"": summary} if "reward" in summary else summary
    return f"eval after {iteration} updates: " + " | ".join(
        f"{name} " * bool(name) + " ".join(f"{k}={v:.3f}" for k, v in s.items() if isinstance(v, float))
        for name, s in sets.items())


def iteration_record(iteration: int, scored: list[dict], prompts: int, timing: dict, **facts) -> dict:
    """One line of metrics.jsonl: the members' rewards, their summary, timings and the given facts
    (seeds, coefficients, update_norm, engine_restarts, engines, checksum)."""
    import statistics

    from esvllm.scoring import mean_components

    rewards = [m["reward"] for m in scored]
    tokens = sum(m["tokens"] for m in scored)
    return {
        "iteration": iteration,
        "reward_mean": statistics.fmean(rewards),
        "reward_std": statistics.pstdev(rewards),
        "reward_min": min(rewards),
        "reward_max": max(rewards),
        "components": mean_components(scored),
        "time": timing,
        "tokens": tokens,
        "tokens_per_s": tokens / timing["rollout_s"] if timing["rollout_s"] > 0 else 0.0,
        "mean_completion_tokens": tokens / (len(scored) * prompts),
        "reward_errors": sum(m["errors"] for m in scored),
        "reward_timeouts": sum(m["timeouts"] for m in scored),
        "rewards": rewards,
        **facts,  # checksum: every engine's, when checked this iteration (they agreed)
    }
