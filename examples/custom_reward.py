"""A reward of your own, in Python, on the CPU demo's model (`adder`, built on first use).

The adder often writes a sum with its last digit one too high ("23+58=" -> "82"), as its corpus did.
This reward is a closure: the sum scores 1, a number that is the sum but for its last digit scores
`partial`. It returns a dict: `reward` is what ES maximises, the other keys are logged components
(evaluation reports `answer` as accuracy and `sum` as sum_rate).

    python examples/custom_reward.py                    # 40 iterations, about a minute on 2 cores
    python examples/custom_reward.py --iterations 2     # a quick look at the path
"""

import argparse

import esvllm
from rewards.addition import addition_splits


def near_misses(partial: float):
    """1 for exactly the sum's digits, `partial` for a number of as many digits that differs from the
    sum in its last digit only, else 0."""
    def reward(completion: str, sample: dict) -> dict:
        target = str(sample["target"])
        exact = completion == target
        near = not exact and len(completion) == len(target) and completion[:-1] == target[:-1] and completion.isdigit()
        return {"reward": 1.0 if exact else partial if near else 0.0, "answer": float(exact), "sum": float(exact),
                "near_miss": float(near)}
    return reward


def main(argv=None) -> esvllm.Run:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--output_dir", default="runs")
    args = parser.parse_args(argv)
    train_rows, heldout_rows = addition_splits(1000, 128, seed=0)  # disjoint problem pools: rows of dicts
    return esvllm.train(
        model="adder", task="addition", reward=near_misses(partial=0.3),
        train_data=train_rows, eval_data=heldout_rows,
        num_engines=2, population_size=16, sigma=0.01, alpha=0.005, antithetic=True, shaping="centered_rank",
        batch_size=64,
        num_iterations=args.iterations, eval_every=args.iterations, max_tokens=6, max_model_len=32,
        output_dir=args.output_dir)


if __name__ == "__main__":  # needed: reward workers are spawned and re-import this file
    run = main()
    first, last = run.evaluations[0], run.evaluations[-1]
    print(f"held-out after {last['iteration']} iterations: reward {first['reward']:.3f} -> {last['reward']:.3f}, "
          f"accuracy {first['accuracy']:.3f} -> {last['accuracy']:.3f}, sum_rate {first['sum_rate']:.3f} -> "
          f"{last['sum_rate']:.3f}; model: {run.final_model}")
