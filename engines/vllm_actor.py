"""One vLLM `LLM` inside a Ray actor: the process that generates and holds the ES state.

The actor runs vLLM in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so `collective_rpc` reaches the
worker extension (engines.vllm_worker) directly. With tensor_parallel_size K > 1, vLLM's `mp`
executor starts one process per rank and `collective_rpc` reaches all K; the actor combines their
answers (engines.ranks) so callers see one engine. `EnginePool` (engines.pool) starts these actors.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from engines import ranks
from engines.actor_base import EngineActorBase

logger = logging.getLogger(__name__)

WORKER_EXTENSION = "engines.vllm_worker.ESWorkerExtension"


class VLLMEngineActor(EngineActorBase):
    """Wrapped with `ray.remote` by engines.pool; every method is one Ray call."""

    def __init__(self, index: int, model_path: str, options: dict):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        # vLLM's start-up runs several full collections; over the objects of the modules just imported
        # they took 1.3 s of a CPU engine's 2.3 s on a 2-core Zen 5. Frozen, they are not traversed.
        # vLLM freezes the whole heap itself once it has started (vllm.utils.gc_utils.freeze_gc_heap,
        # in this process too with --in_process); this only does it before its collections, not after.
        gc.freeze()
        started = time.perf_counter()
        self.index = index
        llm_kwargs = dict(options.get("llm_kwargs", {}))
        self.ranks = int(llm_kwargs.get("tensor_parallel_size", 1))
        self.llm = LLM(model=model_path, worker_extension_cls=WORKER_EXTENSION, **llm_kwargs)
        self.master_dtype = options.get("master_dtype", "float32")
        if options.get("es_state", True):
            results = self.llm.collective_rpc("es_init", args=(self.master_dtype, options.get("noise_cache_bytes", 0),
                                                               options.get("noise_mode", "iid")))
            self.info = ranks.info(results)
        else:  # evaluation only: no master, no noise; the GPU's memory is vLLM's
            self.info = {"es_state": False, "master_bytes": 0}
        if options.get("lowrank_slots"):
            self.llm.collective_rpc("lowrank_init", args=(options["lowrank_slots"], options["lowrank_rank"]))
            self.info["lowrank_slots"] = options["lowrank_slots"]
        if self.ranks > 1:  # the files an export needs, read now: a starting checkpoint may be pruned later
            from engines.safetensors_io import CHECKPOINT_FILES

            self.files = {n: (Path(model_path) / n).read_bytes() for n in CHECKPOINT_FILES
                          if (Path(model_path) / n).is_file()}
        self.info.update(memory_facts(self.llm))
        self.describe(index, started, cpu_bind=os.environ.get("VLLM_CPU_OMP_THREADS_BIND"))

    def rpc(self, method: str, *args):
        if self.ranks == 1:
            return self.llm.collective_rpc(method, args=args)[0]
        return self._sharded_rpc(method, *args)

    def perturb(self, seed: int, sigma: float, sign: int = 1, mirror: bool = False) -> dict:
        from engines.vllm_worker import ESWorkerExtension

        results = self.llm.collective_rpc(ESWorkerExtension.perturb, args=(seed, sigma, sign, mirror))
        return results[0] if self.ranks == 1 else ranks.perturb(results)

    def perturb_lowrank(self, seed: int, sigma: float, rank: int) -> dict:
        from engines.vllm_worker import ESWorkerExtension

        return self.llm.collective_rpc(ESWorkerExtension.perturb_lowrank, args=(seed, sigma, rank))[0]  # TP 1 only

    def _sharded_rpc(self, method: str, *args):
        """The verb on every rank, combined into one engine's answer."""
        call = lambda name, *a: self.llm.collective_rpc(name, args=a)
        if method == "checksum":
            return ranks.checksum(call("checksum_parts"))
        if method == "master_checksum":
            return ranks.checksum(call("checksum_parts"))["master"]
        if method == "restore":
            call("restore")
            return ranks.checksum(call("checksum_parts"))
        if method == "perturb":
            return self.perturb(*args)
        if method == "apply_update":
            return ranks.apply_update(call("apply_update", *args))
        if method in ("read_weights", "master_weights"):
            return ranks.assemble(call(method.replace("weights", "weight_parts"), *args))
        if method == "export":
            return self._export(*args)
        raise ValueError(f"{method}: no tensor-parallel form of this verb")

    def _export(self, path: str, dtype: str | None = None) -> str:
        import torch

        from engines.safetensors_io import export_checkpoint

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.ranks-", dir=target.parent))
        try:
            parts = self.llm.collective_rpc("export_part", args=(str(scratch),))
            out_dtype = getattr(torch, dtype or self.master_dtype)
            return export_checkpoint(str(target), ranks.export_entries(scratch, parts, out_dtype), self.files, out_dtype)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def rollout_lowrank(self, members: list[tuple[int, int]], sigma: float, rank: int, prompts: list[str],
                        sampling: dict) -> dict:
        """All of this engine's low-rank members in one generate call: each member's adapter written
        into its slot, each request tagged with its member's adapter."""
        from vllm import SamplingParams

        from engines.lora_slots import lora_request

        t0 = time.perf_counter()
        self.rpc("write_lowrank", [(int(s), int(slot)) for s, slot in members], sigma, rank)
        t1 = time.perf_counter()
        requests = [lora_request(slot) for _, slot in members for _ in prompts]
        outputs = self.llm.generate(prompts * len(members), SamplingParams(**sampling), lora_request=requests,
                                    use_tqdm=False)
        t2 = time.perf_counter()
        completions = [_completion(o.outputs[0]) for o in outputs]
        n = len(prompts)
        return {"members": [{"completions": completions[i * n : (i + 1) * n], "perturb_s": (t1 - t0) / len(members),
                             "generate_s": (t2 - t1) / len(members)} for i in range(len(members))]}

    def generate(self, prompts: list[str], sampling: dict) -> list[dict]:
        """Completions of `prompts` with the current weights: text and generated token count."""
        from vllm import SamplingParams

        outputs = self.llm.generate(prompts, SamplingParams(**sampling), use_tqdm=False)
        return [_completion(o.outputs[0]) for o in outputs]


def memory_facts(llm) -> dict:
    """What vLLM allocated and measured at start, for the run to compare with its memory plan: the KV
    cache's capacity in tokens, and the CUDA-graph memory it took out of the KV cache (0 without graphs)."""
    cache = llm.llm_engine.vllm_config.cache_config
    graphs = llm.collective_rpc(_measured_cuda_graph_bytes)
    return {"kv_cache_tokens": int(cache.num_gpu_blocks or 0) * int(cache.block_size), "cuda_graph_bytes": max(graphs)}


def _measured_cuda_graph_bytes(worker) -> int:
    """Run in each worker: vLLM's GPU worker keeps its start-up estimate (v1/worker/gpu_worker.py)."""
    return int(getattr(worker, "cudagraph_memory_estimate", 0) or 0)


def _completion(output) -> dict:
    result = {"text": output.text, "tokens": len(output.token_ids)}
    if output.logprobs is not None:  # asked for: {token_id: logprob} per generated position
        result["logprobs"] = [{int(t): float(lp.logprob) for t, lp in pos.items()} for pos in output.logprobs]
    return result
