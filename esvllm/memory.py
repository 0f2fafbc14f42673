"""The memory plan of one engine's GPU(s): vLLM's share, the ES state, and whether the KV cache holds
the run's sequences. Computed from the model's config.json alone (no weights, no GPU, no torch).

Per GPU (tensor parallel size T):
  model       parameters x model dtype bytes / T
  ES state    the master (parameters x master bytes / T), the update buffer (largest tensor, fp32,
              / T), the checksum's chunk temporaries, optimizer state, the noise cache (CPU only),
              and the update's largest temporary (Adam's denominator: the largest tensor in fp32;
              low-rank mode: the members' stacked factors and their product for the largest block
              linear)
  vLLM        gpu_memory_utilization x GPU memory: the model, activations (vLLM profiles a batch of
              16,384 tokens on GPUs of 70 GiB and more other than A100s, else 8,192), the LoRA slot
              buffers in low-rank mode (slots x vLLM's LoRA rank x every block linear's A and B),
              CUDA graphs (an allowance, `cuda_graph_bytes`: vLLM measures them at start and takes
              them out of the KV cache; each engine reports what it measured), KV cache
  reserve     CUDA context and allocator slack outside both

vLLM takes its share when the engine starts; the ES state is allocated afterwards in what is left,
so the share must leave it room: utilization = (GPU - ES state - reserve) / GPU. The KV cache is
what vLLM's share keeps after the model and its activations; it must hold every sequence an engine
generates at once (prompts x (prompt + max_tokens) tokens).
"""

from __future__ import annotations

import dataclasses
import math

GIB = 2**30
CONTEXT_RESERVE = int(1.5 * GIB)  # CUDA context, NCCL and cuBLAS workspaces outside PyTorch's pool
CHECKSUM_TEMPORARY = 7 * 2**20 * 8 * 4  # the checksum's int64 chunk, its indices, weights and product
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Per captured CUDA graph beyond the first: an allowance, not a measurement (vLLM's own floor is 1 MiB;
# no GPU has run this code). Engines report vLLM's measured figure, and the run warns when it is larger.
GRAPH_ALLOWANCE = 4 * 2**20


@dataclasses.dataclass
class ModelShape:
    """What the memory plan needs from a config.json of a tested family (Qwen2, Llama, Qwen3)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int
    qkv_bias: bool = True  # Qwen2's q/k/v biases; Llama and Qwen3 have none
    qk_norm: bool = False  # Qwen3's per-head q_norm/k_norm
    embedding_lora: bool = False  # vLLM gives embed_tokens and lm_head LoRA layers too (Llama, Qwen3; not Qwen2)
    experts: int = 0  # mixture-of-experts (Qwen3-MoE): experts per layer, each of expert_intermediate
    expert_intermediate: int = 0

    @classmethod
    def from_config(cls, config: dict) -> "ModelShape":
        try:
            heads = config["num_attention_heads"]
            return cls(hidden=config["hidden_size"], intermediate=config["intermediate_size"],
                       layers=config["num_hidden_layers"], heads=heads,
                       kv_heads=config.get("num_key_value_heads", heads), vocab=config["vocab_size"],
                       tied=bool(config.get("tie_word_embeddings", False)),
                       head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                       qkv_bias=bool(config.get("attention_bias", config.get("model_type", "qwen2") == "qwen2")),
                       qk_norm=config.get("model_type") in ("qwen3", "qwen3_moe"),
                       embedding_lora=config.get("model_type", "qwen2") != "qwen2",
                       experts=config.get("num_experts") or config.get("num_local_experts") or 0,
                       expert_intermediate=config.get("moe_intermediate_size") or config["intermediate_size"])
        except KeyError as exc:
            raise ValueError(f"config.json lacks {exc}: the memory plan needs a Qwen2/Llama-style config") from None

    def tensors(self) -> dict[str, int]:
        """Element count of each kind of tensor (per layer where it repeats)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        bias = int(self.qkv_bias)
        # A mixture-of-experts layer: every expert's gate, up and down, and the router (counted with the norms).
        mlp = self.experts * self.expert_intermediate if self.experts else self.intermediate
        return {"embed": self.vocab * self.hidden, "lm_head": 0 if self.tied else self.vocab * self.hidden,
                "q": self.hidden * q + bias * q, "k": self.hidden * kv + bias * kv, "v": self.hidden * kv + bias * kv,
                "o": q * self.hidden, "gate": self.hidden * mlp, "up": self.hidden * mlp, "down": mlp * self.hidden,
                "norms": 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0) + self.experts * self.hidden}

    @property
    def parameters(self) -> int:
        t = self.tensors()
        per_layer = sum(t[k] for k in ("q", "k", "v", "o", "gate", "up", "down", "norms"))
        return t["embed"] + t["lm_head"] + self.layers * per_layer + self.hidden

    @property
    def largest_tensor(self) -> int:
        t = self.tensors()
        mlp = self.hidden * (self.expert_intermediate if self.experts else self.intermediate)  # one HF tensor
        return max(t["embed"], mlp, t["q"], t["o"])

    def lora_elements_per_slot_rank(self, tp: int) -> int:
        """Elements of vLLM's LoRA buffers (A: rank x input, B: output x rank per slice) for one slot
        and rank 1, every block linear of every layer, on one GPU: column-parallel layers (qkv,
        gate_up) keep A whole and shard B; row-parallel ones (o, down) shard A and keep B whole.
        Where vLLM wraps embed_tokens and lm_head too, each adds vocab + hidden (unused by ES: zeros)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        hidden, inter = self.hidden, self.intermediate
        qkv = 3 * hidden + (q + 2 * kv) // tp
        o = q // tp + hidden
        gate_up = 2 * hidden + 2 * inter // tp
        down = inter // tp + hidden
        embeddings = 2 * (self.vocab + hidden) if self.embedding_lora else 0
        return self.layers * (qkv + o + gate_up + down) + embeddings

    def kv_bytes_per_token(self, dtype_bytes: int, tp: int) -> int:
        """K and V of one token in every layer, on one GPU (KV heads split, or replicated when fewer than T)."""
        heads_here = max(1, self.kv_heads // tp)
        return 2 * self.layers * heads_here * self.head_dim * dtype_bytes


@dataclasses.dataclass
class MemoryPlan:
    fits: bool
    gpu_memory_gb: float
    tensor_parallel_size: int
    parameters: int
    model_bytes: int
    es_state_bytes: int
    activation_bytes: int
    kv_cache_bytes: int  # what vLLM's share leaves for the KV cache
    lora_bytes: int  # vLLM's LoRA slot buffers (low-rank mode)
    cuda_graph_bytes: int  # the allowance for vLLM's CUDA graphs (cuda_graph_allowance)
    update_temporary_bytes: int  # the update's largest temporary (in the ES state)
    kv_cache_needed_bytes: int
    sequences: int
    tokens_per_sequence: int
    gpu_memory_utilization: float
    reasons: list[str]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        gb = lambda b: f"{b / GIB:.1f} GiB"
        lines = [f"memory plan per GPU ({self.gpu_memory_gb:g} GB, tensor parallel {self.tensor_parallel_size}): "
                 f"{self.parameters / 1e9:.2f}B parameters",
                 f"  model weights {gb(self.model_bytes)}, ES state {gb(self.es_state_bytes)} (update temporaries "
                 f"{gb(self.update_temporary_bytes)}), activations ~{gb(self.activation_bytes)}"
                 + (f", LoRA slots {gb(self.lora_bytes)}" if self.lora_bytes else "")
                 + f", CUDA graphs ~{gb(self.cuda_graph_bytes)}"
                 + f", reserve {gb(CONTEXT_RESERVE)}",
                 f"  vLLM gpu_memory_utilization {self.gpu_memory_utilization:.3f}: KV cache {gb(self.kv_cache_bytes)} "
                 f"for {self.sequences} sequences x {self.tokens_per_sequence} tokens = "
                 f"{gb(self.kv_cache_needed_bytes)} needed",
                 "  fits" if self.fits else "  does NOT fit: " + "; ".join(self.reasons)]
        return "\n".join(lines)


def plan(shape: ModelShape, gpu_memory_bytes: int, *, model_dtype: str = "bfloat16", master_dtype: str = "float32",
         tensor_parallel_size: int = 1, sequences: int = 1, tokens_per_sequence: int = 1024,
         optimizer_state_bytes_per_parameter: int = 0, max_num_batched_tokens: int = 8192,
         gpu_memory_utilization: float | None = None, optimizer: str = "sgd", lora_slots: int = 0,
         lora_rank: int = 0, lowrank_members: int = 0, lowrank_rank: int = 0, max_num_seqs: int = 256) -> MemoryPlan:
    """Memory per GPU of one engine; `gpu_memory_utilization` overrides the computed share.
    Low-rank mode: `lora_slots` adapters of vLLM's `lora_rank` per engine, and an update of
    `lowrank_members` members of rank `lowrank_rank`."""
    tp = tensor_parallel_size
    model_bytes_per = DTYPE_BYTES[model_dtype]
    master_bytes_per = model_bytes_per if master_dtype == "model" else DTYPE_BYTES[master_dtype]
    params = shape.parameters
    model_bytes = math.ceil(params * model_bytes_per / tp)
    # master (+ optimizer state), the update's fp32 delta and an export's model-dtype copy of the
    # largest tensor, the checksum's chunk temporaries
    temporary = update_temporary(shape, optimizer, lowrank_members, lowrank_rank, tp)
    es_state = (math.ceil(params * (master_bytes_per + optimizer_state_bytes_per_parameter) / tp)
                + math.ceil(shape.largest_tensor * (4 + model_bytes_per) / tp) + CHECKSUM_TEMPORARY + temporary)
    lora = lora_slots * lora_rank * shape.lora_elements_per_slot_rank(tp) * model_bytes_per
    # vLLM profiles a forward pass of max_num_batched_tokens: the MLP's gate/up output dominates,
    # plus the sampler's logits for its sequences.
    activations = (max_num_batched_tokens * (shape.hidden * 6 + shape.intermediate * 4 // tp) * model_bytes_per
                   + 256 * shape.vocab * 4)
    graphs = cuda_graph_allowance(shape, max_num_seqs, tp, model_bytes_per, lora=bool(lora_slots))
    share = gpu_memory_utilization
    if share is None:
        share = max(0.0, (gpu_memory_bytes - es_state - CONTEXT_RESERVE) / gpu_memory_bytes)
    share = math.floor(share * 1000) / 1000
    kv_available = int(share * gpu_memory_bytes) - model_bytes - activations - lora - graphs
    kv_needed = sequences * tokens_per_sequence * shape.kv_bytes_per_token(model_bytes_per, tp)
    reasons = []
    if share * gpu_memory_bytes + es_state + CONTEXT_RESERVE > gpu_memory_bytes:
        reasons.append(f"vLLM's share {share:.3f} leaves {(1 - share) * gpu_memory_bytes / GIB:.1f} GiB, the ES state "
                       f"needs {es_state / GIB:.1f} GiB plus {CONTEXT_RESERVE / GIB:.1f} GiB reserve")
    if kv_available < kv_needed:
        reasons.append(f"the KV cache gets {max(kv_available, 0) / GIB:.1f} GiB, the run's {sequences} sequences x "
                       f"{tokens_per_sequence} tokens need {kv_needed / GIB:.1f} GiB")
    if reasons:
        fixes = [f"--tensor_parallel_size {tp * 2} (half the weights and ES state per GPU)"]
        if master_dtype != "model":
            fixes.append("--master_dtype model (no fp32 master: half the ES state, sub-ulp updates lost)")
        if lora:
            fixes.append(f"a smaller --rank (the {lora_slots} LoRA slots of rank {lora_rank} take "
                         f"{lora / GIB:.1f} GiB) or more engines (fewer slots each)")
        fixes.append("fewer prompts per iteration (--batch_size) or a shorter --max_tokens")
        reasons.append("to fix: " + ", or ".join(fixes))
    return MemoryPlan(fits=not reasons, gpu_memory_gb=gpu_memory_bytes / 1e9, tensor_parallel_size=tp,
                      parameters=params, model_bytes=model_bytes, es_state_bytes=es_state,
                      activation_bytes=activations, kv_cache_bytes=max(kv_available, 0), lora_bytes=lora,
                      cuda_graph_bytes=graphs,
                      update_temporary_bytes=temporary,
                      kv_cache_needed_bytes=kv_needed, sequences=sequences, tokens_per_sequence=tokens_per_sequence,
                      gpu_memory_utilization=share, reasons=reasons)


def measured_shortfalls(plan: MemoryPlan, engines: list[dict]) -> list[str]:
    """What the engines measured at start (engines.vllm_actor.memory_facts) against the plan: a KV
    cache that holds fewer tokens than the run's sequences need (vLLM then runs them in smaller
    batches: slower, not wrong), CUDA graphs larger than the plan's allowance."""
    needed = plan.sequences * plan.tokens_per_sequence
    notes = []
    for info in engines:
        name = f"engine {info.get('index', '?')}"
        tokens, graphs = info.get("kv_cache_tokens"), info.get("cuda_graph_bytes") or 0
        if graphs > plan.cuda_graph_bytes:
            notes.append(f"{name}: vLLM's CUDA graphs took {graphs / GIB:.2f} GiB of the KV cache, the plan allowed "
                         f"{plan.cuda_graph_bytes / GIB:.2f} GiB")
        if tokens is not None and tokens < needed:
            notes.append(f"{name}: the KV cache holds {tokens} tokens, the run's {plan.sequences} sequences x "
                         f"{plan.tokens_per_sequence} tokens need {needed}; vLLM runs them in smaller batches "
                         "(slower). To fix: fewer prompts per iteration (--batch_size), a shorter --max_tokens, or "
                         "--tensor_parallel_size")
    return notes


def capture_sizes(max_num_seqs: int) -> list[int]:
    """The batch sizes vLLM 0.32 captures a graph for by default (config/vllm.py, _set_cudagraph_sizes):
    1, 2, 4, multiples of 8 below 256, then of 16, up to min(2 x max_num_seqs, 512)."""
    largest = min(2 * max_num_seqs, 512)
    return [s for s in [1, 2, 4, *range(8, 256, 8), *range(256, largest + 1, 16)] if s <= largest]


def cuda_graph_allowance(shape: ModelShape, max_num_seqs: int, tp: int, dtype_bytes: int, lora: bool) -> int:
    """What vLLM's CUDA graphs may take out of the KV cache, estimated the way vLLM 0.32 measures them
    (v1/worker/gpu_model_runner.py, profile_cudagraph_memory): the shared pool of the largest graph
    (a forward pass of its tokens' activations) plus each further graph; PIECEWISE graphs for every
    size, FULL ones for decode batches up to max_num_seqs; with LoRA every graph is captured twice
    (with and without adapters: cudagraph_specialize_lora)."""
    sizes = capture_sizes(max_num_seqs)
    graphs = (len(sizes) + sum(s <= max_num_seqs for s in sizes)) * (2 if lora else 1)
    pool = max(sizes) * (shape.hidden * 6 + shape.intermediate * 4 // tp) * dtype_bytes
    return pool + (graphs - 1) * GRAPH_ALLOWANCE


def update_temporary(shape: ModelShape, optimizer: str, lowrank_members: int, lowrank_rank: int, tp: int) -> int:
    """The largest temporary an update allocates on one GPU: Adam's denominator (the largest tensor,
    fp32), or in low-rank mode the members' stacked factors (rows and columns x members x rank) and
    their product for the largest block linear (intermediate x hidden), fp32."""
    temporaries = [0]
    if optimizer == "adam":
        temporaries.append(math.ceil(shape.largest_tensor * 4 / tp))
    if lowrank_members:
        rows, cols = shape.intermediate, shape.hidden
        temporaries.append(math.ceil((lowrank_members * lowrank_rank * (rows + cols) + rows * cols) * 4 / tp))
    return max(temporaries)


def batched_tokens(gpu_memory_bytes: int, gpu_name: str | None = None) -> int:
    """vLLM 0.32's default max_num_batched_tokens for the LLM class (engine/arg_utils.py): 16,384 on
    GPUs of 70 GiB and more other than A100s, else 8,192 (an unknown GPU gets the larger batch)."""
    large = gpu_memory_bytes >= 70 * GIB and "a100" not in (gpu_name or "").lower()
    return 16384 if large else 8192
