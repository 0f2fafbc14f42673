"""One vLLM `LLM` inside a Ray actor: the process that generates and holds the ES state.

The actor runs vLLM in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so `collective_rpc` reaches the
worker extension (engines.vllm_worker) directly. `EnginePool` (engines.pool) starts these actors.
"""

from __future__ import annotations

import logging
import os
import time

from engines.actor_base import EngineActorBase

logger = logging.getLogger(__name__)

WORKER_EXTENSION = "engines.vllm_worker.ESWorkerExtension"


class VLLMEngineActor(EngineActorBase):
    """Wrapped with `ray.remote` by engines.pool; every method is one Ray call."""

    def __init__(self, index: int, model_path: str, options: dict):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        started = time.perf_counter()
        self.index = index
        llm_kwargs = dict(options.get("llm_kwargs", {}))
        self.llm = LLM(model=model_path, worker_extension_cls=WORKER_EXTENSION, **llm_kwargs)
        self.info = self.llm.collective_rpc(
            "es_init", args=(options.get("master_dtype", "float32"), options.get("noise_cache_bytes", 0)))[0]
        self.describe(index, started, cpu_bind=os.environ.get("VLLM_CPU_OMP_THREADS_BIND"))

    def rpc(self, method: str, *args):
        return self.llm.collective_rpc(method, args=args)[0]

    def generate(self, prompts: list[str], sampling: dict) -> list[dict]:
        """Completions of `prompts` with the current weights: text and generated token count."""
        from vllm import SamplingParams

        outputs = self.llm.generate(prompts, SamplingParams(**sampling), use_tqdm=False)
        return [_completion(o.outputs[0]) for o in outputs]


def _completion(output) -> dict:
    result = {"text": output.text, "tokens": len(output.token_ids)}
    if output.logprobs is not None:  # asked for: {token_id: logprob} per generated position
        result["logprobs"] = [{int(t): float(lp.logprob) for t, lp in pos.items()} for pos in output.logprobs]
    return result
