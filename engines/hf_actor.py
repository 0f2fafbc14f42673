"""The reference backend (`--engine hf`): ES with Hugging Face transformers generation.

It runs ES the way the paper's original (pre-vLLM) scripts do: one model copy per worker, batched
`model.generate`, weights perturbed in place. The ES state (fp32 master, noise, update, checksum,
export) is the same `engines.es_state.ESState` as the vLLM engines use, so both backends compute
bit-identical weights for the same seeds and coefficients; only generation differs.
"""

from __future__ import annotations

import os
import time

from engines.actor_base import EngineActorBase


class HFEngineActor(EngineActorBase):
    def __init__(self, index: int, model_path: str, options: dict):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from engines.es_state import ESState
        from engines.safetensors_io import load_checkpoint

        started = time.perf_counter()
        cores = options.get("cores")
        if cores:  # this engine's share of the machine, like the vLLM engines' thread binding
            os.sched_setaffinity(0, cores)
            torch.set_num_threads(len(cores))
        self.device = "cuda" if options.get("device") == "cuda" else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, options["dtype"]))
        self.model = self.model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.tokenizer.padding_side = "left"
        self.eos = stop_token_ids(self.model, self.tokenizer)
        if self.tokenizer.pad_token_id is None:  # Llama 3 has none: any id works under the attention mask
            self.tokenizer.pad_token_id = self.eos[0]
        self.params = dict(self.model.named_parameters())  # tied lm_head is listed once, as embed_tokens
        tied = getattr(self.model.config, "tie_word_embeddings", False)
        master = load_checkpoint(model_path, self.device, getattr(torch, options.get("master_dtype", "float32")),
                                 skip={"lm_head.weight"} if tied else ())
        missing = set(self.params) ^ set(master)
        if missing:
            raise ValueError(f"checkpoint and model tensors differ: {sorted(missing)[:5]}")
        self.es = ESState(master, self._write_all, model_path, options.get("noise_cache_bytes", 0),
                          noise_mode=options.get("noise_mode", "iid"), read_all=self._read_all)
        self.info = self.es.info()
        self.describe(index, started, cpu_bind=",".join(map(str, cores or [])), backend="hf")

    def _write_all(self, write) -> None:
        import torch

        with torch.no_grad():
            for name, master in self.es.tensors().items():
                write(name, master, self.params[name].data)

    def _read_all(self, read) -> None:
        for name in self.es.tensors():
            read(name, self.params[name].data)

    def rpc(self, method: str, *args):
        if method == "read_weights":
            names = args[0] if args else None
            return {n: self.params[n].detach().float().cpu().clone() for n in names or list(self.params)}
        return getattr(self.es, method)(*args)

    def perturb(self, seed: int, sigma: float, sign: int = 1, mirror: bool = False) -> dict:
        return self.es.perturb(seed, sigma, sign, mirror)

    def perturb_lowrank(self, seed: int, sigma: float, rank: int) -> dict:
        return self.es.perturb_lowrank(seed, sigma, rank)

    def generate(self, prompts: list[str], sampling: dict) -> list[dict]:
        import torch

        batch = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.device)
        eos = self.eos
        greedy = sampling.get("temperature", 0.0) == 0
        if not greedy and "seed" in sampling:
            torch.manual_seed(sampling["seed"])
        with torch.no_grad():
            out = self.model.generate(**batch, max_new_tokens=sampling["max_tokens"], do_sample=not greedy,
                                      temperature=None if greedy else sampling["temperature"],
                                      top_p=None, top_k=None, pad_token_id=self.tokenizer.pad_token_id,
                                      eos_token_id=eos)
        completions = []
        for row in out[:, batch["input_ids"].shape[1]:].tolist():
            end = next((i for i, t in enumerate(row) if t in eos), None)
            tokens = row if end is None else row[: end + 1]  # like vLLM: the EOS counts
            text = self.tokenizer.decode(tokens if end is None else tokens[:-1], skip_special_tokens=True)
            completions.append({"text": text, "tokens": len(tokens)})
        return completions


def stop_token_ids(model, tokenizer) -> list[int]:
    """The tokens generation stops at, as vLLM takes them: the tokenizer's EOS first, then every EOS of
    the model's generation config (Llama 3 Instruct: <|end_of_text|>, <|eom_id|>, <|eot_id|>)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for token in [configured] if isinstance(configured, int) else configured or []:
        if token not in ids:
            ids.append(token)
    return ids
