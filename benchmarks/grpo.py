"""`make bench-grpo`: ES against TRL's GRPO on the demo's task, side by side.

    python -m benchmarks.grpo                                  # the demo's ES run, GRPO at 3 learning rates
    python -m benchmarks.grpo --learning_rates 1e-4 --budget 0.25   # a quick look: a quarter of the budget

Both sides start from the demo's base model (experiments/demo.toml), are scored by the demo's reward
on completions of the demo's training prompts, and are evaluated greedy on the same held-out problems
by `esvllm.eval` (ES in its run, on its vLLM engines; GRPO's checkpoints on the HF engine in this
process: the same scorer, the same records; both evaluate the base model first, so the backends'
agreement shows in the first row). GRPO is TRL's `GRPOTrainer` (`pip install -e ".[rl]"`) with the
paper's baseline settings where they apply (the paper's repository, baselines/GRPO: GRPO-Zero with
group size 30, the ES population; no KL coefficient in their config, so beta 0; AdamW with betas
(0.9, 0.999) and no weight decay;
gradient norm clipped at 1; a constant learning rate, swept here over three values for this model),
sampling at temperature 1 (a group needs different completions), and as many completions as the ES
run generated (the paper's fair-comparison rule). Each side runs alone with the machine's cores (ES:
one engine per core; GRPO: torch with that many threads). Times exclude evaluation and checkpoints.
Writes bench/grpo.json, bench/grpo.md and docs/grpo.png (held-out accuracy against wall time and
against generated tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.curves import plot_time_and_tokens, run_curve, scores
from benchmarks.provenance import stamp

GROUP_SIZE = 30  # the paper's GRPO baseline: the ES population size
PROMPTS_PER_STEP = 4  # 4 x 30 = 120 completions a step
LEARNING_RATES = (3e-5, 1e-4, 3e-4)


def es_side(flags: list[str], out: Path) -> dict:
    """The demo's ES run: held-out evaluations against the iterations' own time and generated tokens."""
    from esvllm.run import main
    from esvllm.runlog import read_metrics

    run_dir = main(["--experiment", "demo", "--output_dir", str(out / "es"), *flags])
    completions = sum(len(m["rewards"]) for m in read_metrics(run_dir)) * _prompts_per_member(run_dir)
    points = [{**p, "step": p["iteration"]} for p in run_curve(run_dir)]
    return {"run_dir": str(run_dir), "completions": completions, "points": points}


def grpo_side(learning_rate: float, completions: int, eval_points: int, out: Path, config) -> dict:
    """GRPO for `completions` completions, its model saved at `eval_points` + 1 evenly spaced steps
    (the first is the base model) and each evaluated as ES's are."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from esvllm.run import prepare_inputs
    from rewards import resolve_reward

    inputs = prepare_inputs(config)
    reward_fn = resolve_reward(config.reward_spec)
    per_step = GROUP_SIZE * PROMPTS_PER_STEP
    steps = max(1, completions // per_step)
    saves = sorted({round(steps * k / eval_points) for k in range(eval_points + 1)})
    where = out / f"grpo_lr{learning_rate:g}"
    clock = {"seconds": 0.0, "tokens": 0, "since": None}

    rows = [dict(s) for s in inputs["train"]]
    fields = [k for k in rows[0] if k != "prompt"]

    def reward(prompts, completions, completion_ids, **columns):  # TRL passes the dataset's columns by name
        clock["tokens"] += sum(len(ids) for ids in completion_ids)
        samples = [{"prompt": p, **{k: columns[k][i] for k in fields}} for i, p in enumerate(prompts)]
        return [float(_reward_value(reward_fn(c, s))) for c, s in zip(completions, samples)]

    class SaveAndTime(TrainerCallback):  # the training clock stops while a checkpoint is written
        def on_step_begin(self, args, state, control, **kw):
            clock["since"] = time.perf_counter()

        def on_step_end(self, args, state, control, model=None, **kw):
            clock["seconds"] += time.perf_counter() - clock["since"]
            if state.global_step in saves:
                save(model, state.global_step)

    tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
    model = AutoModelForCausalLM.from_pretrained(inputs["model"], dtype=torch.float32)
    marks = []

    def save(model, step):
        model.save_pretrained(where / f"step_{step:06d}")
        tokenizer.save_pretrained(where / f"step_{step:06d}")
        marks.append({"step": step, "seconds": clock["seconds"], "tokens": clock["tokens"]})

    torch.set_num_threads(os.cpu_count() or 1)
    save(model, 0)
    args = GRPOConfig(output_dir=str(where / "trainer"), num_generations=GROUP_SIZE, per_device_train_batch_size=per_step,
                      max_completion_length=config.max_tokens, learning_rate=learning_rate, beta=0.0,
                      adam_beta1=0.9, adam_beta2=0.999, weight_decay=0.0, max_grad_norm=1.0,
                      lr_scheduler_type="constant", warmup_steps=0, max_steps=steps, temperature=1.0,
                      seed=config.global_seed, use_cpu=True, report_to="none", save_strategy="no", logging_steps=50,
                      disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=tokenizer, callbacks=[SaveAndTime()])
    trainer.train()
    points = [{**mark, **evaluate(where / f"step_{mark['step']:06d}", config)} for mark in marks]
    return {"learning_rate": learning_rate, "steps": steps, "completions": steps * per_step, "points": points}


def evaluate(model_dir: Path, config) -> dict:
    """Held-out scores of a checkpoint through `esvllm.eval` (HF engine in this process), recomputed
    from the per-problem records it writes."""
    from esvllm.eval import main

    records = model_dir / "eval.jsonl"
    main(["--model", str(model_dir), "--task", config.task, "--test_size", str(config.test_size),
          "--data_sample", str(config.data_sample), "--global_seed", str(config.global_seed),
          "--max_tokens", str(config.max_tokens), "--max_model_len", str(config.max_model_len),
          "--engine", "hf", "--in_process", "--output", str(records)])
    return scores([json.loads(line) for line in records.read_text().splitlines()])


def table(es: dict, grpo: list[dict]) -> str:
    lines = ["| method | completions | wall s | generated tokens | held-out accuracy before → after | sum_rate "
             "before → after | best accuracy (at s) |", "|---|---|---|---|---|---|---|"]
    sides = [("ES (the demo)", es)] + [(f"GRPO lr {g['learning_rate']:g}", g) for g in grpo]
    for name, side in sides:
        first, last = side["points"][0], side["points"][-1]
        best = max(side["points"], key=lambda p: p["accuracy"])
        sums = (f"{first['sum_rate']:.3f} → {last['sum_rate']:.3f}" if first.get("sum_rate") is not None else "n/a")
        lines.append(f"| {name} | {side['completions']} | {last['seconds']:.0f} | {last['tokens']} | "
                     f"{first['accuracy']:.3f} → {last['accuracy']:.3f} | {sums} | "
                     f"{best['accuracy']:.3f} ({best['seconds']:.0f}) |")
    return "\n".join(lines)


def plot(es: dict, grpo: list[dict], path: Path) -> None:
    series = [(name, side["points"], {"marker": "o"})
              for name, side in [("ES (the demo)", es)] + [(f"GRPO lr {g['learning_rate']:g}", g) for g in grpo]]
    plot_time_and_tokens(series, "accuracy", "held-out accuracy (greedy, exact match)",
                         "ES and GRPO on the demo task, same base model, reward, prompts and held-out set", path)


def _prompts_per_member(run_dir: Path) -> int:
    config = json.loads((Path(run_dir) / "config.json").read_text())
    return config.get("batch_size") or config["data_sample"]


def _reward_value(out) -> float:
    return out["reward"] if isinstance(out, dict) else out


def main(argv=None) -> dict:
    from esvllm.run import resolve_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learning_rates", nargs="+", type=float, default=list(LEARNING_RATES))
    parser.add_argument("--budget", type=float, default=1.0, help="fraction of the demo's iterations (both sides)")
    parser.add_argument("--es_flags", nargs=argparse.REMAINDER, default=[], help="more flags for the ES run")
    parser.add_argument("--out", default="bench")
    parser.add_argument("--runs", default="runs/grpo", help="where the runs and checkpoints go")
    parser.add_argument("--plot", default="docs/grpo.png")
    args = parser.parse_args(argv)
    config = resolve_config(["--experiment", "demo", *args.es_flags])
    iterations = max(1, round(config.num_iterations * args.budget))
    eval_every = max(1, min(config.eval_every or iterations, iterations))
    flags = ["--num_iterations", str(iterations), "--eval_every", str(eval_every), *args.es_flags]
    runs, started = Path(args.runs), time.perf_counter()
    es = es_side(flags, runs)
    grpo = [grpo_side(lr, es["completions"], len(es["points"]) - 1, runs, config) for lr in args.learning_rates]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {**stamp(), "settings": {**vars(args), "group_size": GROUP_SIZE, "prompts_per_step": PROMPTS_PER_STEP,
                                      "es_iterations": iterations}, "es": es, "grpo": grpo}
    (out / "grpo.json").write_text(json.dumps(result, indent=2))
    text = table(es, grpo)
    (out / "grpo.md").write_text(text + "\n")
    plot(es, grpo, Path(args.plot))
    print(text)
    print(f"{time.perf_counter() - started:.0f} s; median held-out accuracy after GRPO over learning rates: "
          f"{statistics.median(g['points'][-1]['accuracy'] for g in grpo):.3f}")
    return result


if __name__ == "__main__":
    main()
