"""Low-rank members as LoRA adapters in vLLM's slots (runs inside the vLLM worker; engines.vllm_worker).

A member of low-rank mode is the base model plus sigma * A B^T / sqrt(r) on every block linear
(kernels.lowrank). vLLM's multi-LoRA serving computes y = x W^T + (x a^T) b^T per request, with the
request's adapter (a: r x in, b: out x r), so member i is the adapter a = B_i^T, b = sigma/sqrt(r) A_i:
all members of an engine are served by one `generate` call, each request tagged with its member's
adapter. The adapters are registered once (zeros, pinned to fixed slots, no disk) and rewritten in
place from the members' seeds before each batch: only seeds travel.
"""

from __future__ import annotations

import math

import torch

from kernels.lowrank import factors

LORA_PATH = "/esvllm/lowrank-member"  # adapters are written in place; vLLM never reads this path


def lora_request(slot_id: int):
    from vllm.lora.request import LoRARequest

    return LoRARequest(f"es-member-{slot_id}", slot_id, LORA_PATH)


class LoRASlots:
    """Mixed into the ES worker extension; needs `self._master` (HF name -> fp32 tensor)."""

    def lowrank_init(self, slots: int, rank: int) -> dict:
        """Register `slots` zero adapters (ids 1..slots), pin them, and map each block linear's HF
        weight to its LoRA layer and slice."""
        manager = self.model_runner.lora_manager
        adapters = manager._adapter_manager
        for slot_id in range(1, slots + 1):
            manager.add_dummy_lora(lora_request(slot_id), rank=rank)
            manager.pin_adapter(slot_id)
        index = list(adapters.lora_index_to_id)
        self._lora_slot = {slot_id: index.index(slot_id) for slot_id in range(1, slots + 1)}
        packed = getattr(self.model_runner.model, "packed_modules_mapping", {})
        self._lora_slices = {}
        for module_name, module in adapters.modules.items():
            parent, _, leaf = module_name.rpartition(".")
            for s, member in enumerate(packed.get(leaf, [leaf])):
                self._lora_slices[f"{parent}.{member}.weight"] = (module, s)
        from engines.es_state import is_lowrank_target

        missing = [n for n, t in self._master.items() if is_lowrank_target(n, t) and n not in self._lora_slices]
        if missing:
            raise ValueError(f"low-rank mode: no LoRA layer serves {missing[:3]}; this architecture is not supported")
        # Llama and Qwen3 also get LoRA layers on embed_tokens and lm_head (vLLM's embedding_modules):
        # members perturb the block linears only, so those adapters stay zero.
        self._lora_slices = {n: v for n, v in self._lora_slices.items()
                             if n in self._master and is_lowrank_target(n, self._master[n])}
        served = {id(module) for module, _ in self._lora_slices.values()}
        with torch.no_grad():
            for module in adapters.modules.values():
                if id(module) not in served:
                    for buffer in (module.lora_a_stacked, module.lora_b_stacked):
                        for t in buffer if isinstance(buffer, (tuple, list)) else (buffer,):
                            t.zero_()
        self._lowrank_rank = rank
        return {"slots": slots, "lora_layers": len(self._lora_slices)}

    def write_lowrank(self, members: list[tuple[int, int]], sigma: float, rank: int) -> dict:
        """Member (seed, slot id) -> that slot holds its adapter, for every block linear."""
        scale = sigma / math.sqrt(rank)
        with torch.no_grad():
            for seed, slot_id in members:
                slot = self._lora_slot[slot_id]
                for name, (module, s) in self._lora_slices.items():
                    a, b = factors(int(seed), name, tuple(self._master[name].shape), rank, self._master[name].device)
                    lora_a, lora_b = module.lora_a_stacked[s][slot, 0], module.lora_b_stacked[s][slot, 0]
                    lora_a.zero_()
                    lora_b.zero_()
                    lora_a[:rank].copy_(b.t())  # in place: kernels keep the buffers' addresses
                    lora_b[:, :rank].copy_(a * scale)
        return {"written": len(members)}

    def lora_buffer_bytes(self) -> int:
        """Bytes of vLLM's LoRA slot buffers (every stacked A and B): the memory plan's LoRA term."""
        adapters = self.model_runner.lora_manager._adapter_manager
        return sum(t.numel() * t.element_size() for module in adapters.modules.values()
                   for t in (*module.lora_a_stacked, *module.lora_b_stacked))

    def lowrank_layout(self) -> list[int]:
        """The slots' adapter ids: unchanged after every generate, or members would be mixed up."""
        return list(self.model_runner.lora_manager._adapter_manager.lora_index_to_id)
