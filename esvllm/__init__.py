"""esvllm: fine-tune LLMs with Evolution Strategies on vLLM engines.

    import esvllm
    run = esvllm.train(model="adder", reward=my_reward, train_data=rows, num_iterations=20)

The command line is `python -m esvllm.run`; both run the same code (esvllm.api).
"""

__all__ = ["Run", "RunConfig", "train"]


def __getattr__(name):  # lazy: `python -m esvllm.run --help` stays instant
    if name in ("Run", "train"):
        from esvllm import api

        return getattr(api, name)
    if name == "RunConfig":
        from esvllm.config import RunConfig

        return RunConfig
    raise AttributeError(f"module 'esvllm' has no attribute {name!r}")
