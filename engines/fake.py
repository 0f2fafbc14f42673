"""A stand-in engine with no model, for fast tests of everything around the engines (`--engine fake`).

It holds the real ES state (engines.es_state) over the checkpoint's tensors, so perturb, update,
checksum and export are the engines' own code; only generation is fake: each completion is text
hashed from the current weights (perturbation included) and the prompt, so it changes whenever the
weights do and is the same on every engine holding the same weights.

Test hook: `die_on_call` (from EngineOptions.die_on_call; for a whole run ESVLLM_FAKE_DIE_ON_CALL,
e.g. "1:3" or "1:apply_update:2") makes the engine's process exit at its k-th call, counting `rpc`
and `generate` calls (a rollout is one of each), or only the RPCs of the named method.
ESVLLM_FAKE_CORRUPT="1:2" makes engine 1 add 1e-3 to one element of its master after its 2nd update,
as an update kernel that computed a wrong value would; "1:2:served" to one element of the weights it
serves (not the master), as a write kernel would. Either way the engines then disagree.
ESVLLM_FAKE_HOLD="0:apply_update:2:/tmp/marker" makes engine 0 create the marker file at its 2nd
call of that method ("init" for its start-up, "generate", or an RPC) and then wait there, so a test
can interrupt a run at exactly that stage.
"""

from __future__ import annotations

import hashlib
import os
import string
import time
from pathlib import Path

from engines.actor_base import EngineActorBase

ALPHABET = string.ascii_lowercase + " "


class FakeEngineActor(EngineActorBase):
    def __init__(self, index: int, model_path: str, options: dict):
        import torch

        from engines.es_state import ESState
        from engines.safetensors_io import load_checkpoint

        started = time.perf_counter()
        self.hold = hold_spec(index)
        self.held_calls: dict[str, int] = {}
        self._hold_at("init")
        master = load_checkpoint(model_path, "cpu", getattr(torch, options.get("master_dtype", "float32")))
        self.weights = {name: torch.empty(t.shape, dtype=getattr(torch, options.get("dtype", "float32")))
                        for name, t in master.items()}
        self.es = ESState(master, self._write_all, model_path, options.get("noise_cache_bytes", 0),
                          noise_mode=options.get("noise_mode", "iid"), read_all=self._read_all)
        self.es.restore()
        self.die_on_call = options.get("die_on_call")  # (method or None, k)
        self.calls = 0
        self.lowrank_slots = options.get("lowrank_slots", 0)
        self.corrupt_at, self.corrupt_what = corrupt_spec(index)  # after which update, and master or served
        self.updates = 0
        self.info = {**self.es.info(), **memory_spec()}
        self.describe(index, started, backend="fake")

    def _write_all(self, write) -> None:
        for name, master in self.es.tensors().items():
            write(name, master, self.weights[name])

    def _read_all(self, read) -> None:
        for name, served in self.weights.items():
            read(name, served)

    def _hold_at(self, method: str) -> None:
        if self.hold is None or self.hold[0] != method:
            return
        self.held_calls[method] = self.held_calls.get(method, 0) + 1
        if self.held_calls[method] == self.hold[1]:
            Path(self.hold[2]).touch()
            time.sleep(600)  # until the test's signal ends the run

    def _count_call(self, method: str | None = None) -> None:
        self._hold_at(method)
        if not self.die_on_call:
            return
        target, k = self.die_on_call
        if target is None or target == method:
            self.calls += 1
            if self.calls >= k:
                os._exit(1)  # like a crash: no cleanup, the actor is gone

    def rpc(self, method: str, *args):
        self._count_call(method)
        if method == "read_weights":
            names = args[0] if args else None
            return {n: self.weights[n].float().clone() for n in names or list(self.weights)}
        result = getattr(self.es, method)(*args)
        if method == "apply_update":
            self.updates += 1
            if self.updates == self.corrupt_at:
                tensors = self.weights if self.corrupt_what == "served" else self.es.tensors()
                next(iter(tensors.values())).view(-1)[0] += 1e-3
        return result

    def perturb(self, seed: int, sigma: float, sign: int = 1, mirror: bool = False) -> dict:
        self._count_call("perturb")
        return self.es.perturb(seed, sigma, sign, mirror)

    def perturb_lowrank(self, seed: int, sigma: float, rank: int) -> dict:
        self._count_call("perturb_lowrank")
        return self.es.perturb_lowrank(seed, sigma, rank)

    def rollout_lowrank(self, members, sigma, rank, prompts, sampling) -> dict:
        bad = [slot for _, slot in members if not 1 <= slot <= self.lowrank_slots]
        if bad:  # as engines.lora_slots: a slot the engine does not have
            raise KeyError(f"low-rank slots {bad}: this engine has slots 1..{self.lowrank_slots}")
        return super().rollout_lowrank(members, sigma, rank, prompts, sampling)

    def generate(self, prompts: list[str], sampling: dict) -> list[dict]:
        self._count_call("generate")
        digest = hashlib.blake2b(digest_size=16)
        for tensor in self.weights.values():
            digest.update(tensor.numpy().tobytes())
        state = digest.digest()
        limit = int(sampling["max_tokens"])
        completions = []
        for prompt in prompts:
            stream = hashlib.shake_256(state + prompt.encode()).digest(limit + 1)
            length = stream[0] % (limit + 1)
            text = "".join(ALPHABET[b % len(ALPHABET)] for b in stream[1 : length + 1])
            completions.append({"text": text, "tokens": min(length + 1, limit)})  # + EOS when it stopped
        return completions


def corrupt_spec(index: int) -> tuple[int | None, str]:
    """(update count, "master" or "served"): when and where engine `index` corrupts a weight
    (ESVLLM_FAKE_CORRUPT="index:k" or "index:k:served")."""
    spec = os.environ.get("ESVLLM_FAKE_CORRUPT", "")
    if not spec:
        return None, "master"
    target, k, *what = spec.split(":")
    return (int(k) if int(target) == index else None), (what[0] if what else "master")


def memory_spec() -> dict:
    """What a vLLM engine measures at start (engines.vllm_actor.memory_facts), as a test sets it
    (ESVLLM_FAKE_MEMORY="kv_cache_tokens:cuda_graph_bytes"); none otherwise."""
    spec = os.environ.get("ESVLLM_FAKE_MEMORY", "")
    if not spec:
        return {}
    tokens, graphs = spec.split(":")
    return {"kv_cache_tokens": int(tokens), "cuda_graph_bytes": int(graphs)}


def hold_spec(index: int) -> tuple[str, int, str] | None:
    """(method, k, marker) where engine `index` waits (ESVLLM_FAKE_HOLD="index:method:k:marker")."""
    spec = os.environ.get("ESVLLM_FAKE_HOLD", "")
    if not spec:
        return None
    target, method, k, marker = spec.split(":", 3)
    return (method, int(k), marker) if int(target) == index else None
