"""Built-in models: small checkpoints of the supported families built here from a seed (no model hub).

`resolve_model("tiny")` builds (once) and returns the path of a Hugging Face checkpoint directory:
config.json, model.safetensors and a character-level tokenizer. Any other value must be a local HF
checkpoint directory (e.g. a downloaded Qwen2.5), returned as an absolute path.

    python -m esvllm.models tiny small      # build into the cache and print the paths

Shapes keep head_dim at 32 or 64: vLLM's CPU attention rejects 16.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import string
import sys
import tempfile
from pathlib import Path

from engines.architectures import TESTED_ARCHITECTURES
from esvllm.model_shapes import QWEN25_SHAPES, RELEASED_SHAPES, write_qwen25_shaped, write_released_shape
from esvllm.pretrain import Recipe

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
# Printable ASCII with space and newline: enough for arithmetic prompts and answers.
CHARACTERS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
VOCAB_SIZE = 128


FAMILIES = TESTED_ARCHITECTURES  # each has a tiny built-in model


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Shape of a built-in model of one family (FAMILIES); the seed fixes its random weights."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 1024
    init_std: float = 0.02
    seed: int = 0
    pretrain: Recipe | None = None  # supervised pre-training on a task (esvllm.pretrain), if any
    family: str = "qwen2"

    def digest(self) -> str:
        # v2: written by esvllm.model_build (CPU-independent bits), not the CPU's own kernels
        text = json.dumps(dataclasses.asdict(self), sort_keys=True) + f"/vocab{VOCAB_SIZE}/v2"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


BUILTIN_MODELS = {
    # ~0.3M parameters, tied embeddings like Qwen2.5-0.5B/3B: for tests.
    "tiny": ModelSpec(128, 256, 2, 4, 2, tie_word_embeddings=True),
    # ~24M parameters, untied lm_head like Qwen2.5-7B: for benchmarks and the demo.
    "small": ModelSpec(512, 1536, 8, 8, 2, tie_word_embeddings=False),
    # ~100M parameters: for scaling figures.
    "medium": ModelSpec(768, 3072, 12, 12, 4, tie_word_embeddings=False),
    # tiny's shape, pre-trained on the addition task's pre-training problems (55% of them written with the
    # last digit one too high): the CPU demo's base model.
    "adder": ModelSpec(128, 256, 2, 4, 2, tie_word_embeddings=True, pretrain=Recipe(steps=1500, off_by_one_fraction=0.55)),
    # tiny's size in the Llama 3 family: GQA, untied lm_head, no biases, llama3 rope scaling.
    "tiny-llama": ModelSpec(128, 256, 2, 4, 2, tie_word_embeddings=False, family="llama"),
    # tiny's size in the Qwen3 family: per-head q_norm/k_norm, no qkv bias, tied embeddings.
    "tiny-qwen3": ModelSpec(128, 256, 2, 4, 2, tie_word_embeddings=True, family="qwen3"),
    # tiny-qwen3 with a mixture of 4 experts of size 64 in every layer (2 per token), untied.
    "tiny-qwen3-moe": ModelSpec(128, 256, 2, 4, 2, tie_word_embeddings=False, family="qwen3_moe"),
    # Mixtral's layout (block_sparse_moe, experts' w1/w3/w2) at that size: 4 experts of 64, 2 per token.
    "tiny-mixtral": ModelSpec(128, 64, 2, 4, 2, tie_word_embeddings=False, family="mixtral"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("ESVLLM_CACHE", Path.home() / ".cache" / "esvllm")) / "models"


HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]  # never pickles


def resolve_model(name_or_path: str) -> str:
    """Path of an HF checkpoint: a built-in name (built on first use), an existing directory, or a
    Hugging Face Hub name like Qwen/Qwen2.5-3B-Instruct (from the Hub cache, else downloaded)."""
    if name_or_path in BUILTIN_MODELS:
        return str(build_model(name_or_path))
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return str(path.resolve())
    if not path.exists() and _looks_like_hub_name(name_or_path):
        return from_hub(name_or_path)
    raise FileNotFoundError(
        f"model {name_or_path!r}: no HF checkpoint at {path.resolve()} (config.json missing). Pass a local "
        f"checkpoint directory, a Hub name (org/model), or a built-in model: {', '.join(BUILTIN_MODELS)}"
    )


def _looks_like_hub_name(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def from_hub(repo_id: str) -> str:
    """The checkpoint's directory in the Hugging Face cache: cached, or downloaded now (progress bar).
    Only config, tokenizer and safetensors files are fetched. HF_HUB_OFFLINE=1 uses the cache alone."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        raise FileNotFoundError(f"model {repo_id!r}: not a local directory, and huggingface_hub is not "
                                "installed to fetch it from the Hub") from None
    try:
        path = snapshot_download(repo_id, allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError as exc:
        raise FileNotFoundError(f"model {repo_id!r}: not in the Hugging Face cache and the Hub cannot be reached "
                                f"({exc.__class__.__name__}); download it where there is a network, or pass a "
                                "local directory") from None
    except Exception as exc:  # repository not found, gated, network errors: name the model and why
        raise FileNotFoundError(f"model {repo_id!r}: cannot get it from the Hugging Face Hub: {exc}") from None
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"model {repo_id!r}: the Hub snapshot at {path} has no config.json")
    return str(path)


def build_model(name: str, root: Path | None = None, seed: int = 0) -> Path:
    """Build built-in model `name` into the cache (atomically) unless it is there; return its path.
    `seed` > 0: the same model initialised and pre-trained from another seed (`make bench-learning`)."""
    spec = BUILTIN_MODELS[name]
    if seed:
        pretrain = spec.pretrain and dataclasses.replace(spec.pretrain, seed=seed)
        spec = dataclasses.replace(spec, seed=seed, pretrain=pretrain)
    target = (root or cache_dir()) / f"{name}{f'-seed{seed}' if seed else ''}-{spec.digest()}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: a second process (two runs, two test workers) waits for the first's model
    # instead of pre-training the same one again beside it.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # said, so that a wait of minutes does not look like a hang
            print(f"waiting for another process that is building {name} into {target.parent} (on CPU, `make "
                  "install` builds the built-in models beside pip: .venv/models-build.log)",
                  file=sys.stderr, flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model.safetensors").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            from esvllm.model_build import write_reproducibly  # the same bits on every CPU

            write_reproducibly(spec, staging)
            os.rename(staging, target)  # atomic: a build killed half-way leaves only its staging directory
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def family_classes(family: str):
    """transformers' own config and model classes of a family."""
    import transformers

    name = FAMILIES[family].removesuffix("ForCausalLM")
    return getattr(transformers, f"{name}Config"), getattr(transformers, FAMILIES[family])


def family_options(spec: ModelSpec) -> dict:
    """What a family's config sets beyond the shared shape."""
    if spec.family == "llama":  # Llama 3's rope scaling, shrunk to this model's context
        return {"attention_bias": False, "mlp_bias": False,
                "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 4.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": spec.max_position_embeddings // 4}}
    if spec.family == "qwen3":
        return {"head_dim": spec.hidden_size // spec.num_attention_heads, "attention_bias": False}
    if spec.family == "qwen3_moe":  # every layer sparse: experts of a quarter of intermediate_size
        return {"head_dim": spec.hidden_size // spec.num_attention_heads, "attention_bias": False,
                "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": spec.intermediate_size // 4,
                "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True}
    if spec.family == "mixtral":  # intermediate_size is each expert's
        return {"head_dim": spec.hidden_size // spec.num_attention_heads, "num_local_experts": 4,
                "num_experts_per_tok": 2}
    return {}


def write_checkpoint(spec: ModelSpec, path: Path) -> None:
    import torch

    config_class, model_class = family_classes(spec.family)
    tokenizer = build_tokenizer()
    config = config_class(
        vocab_size=VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.init_std,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        **family_options(spec),
    )
    torch.manual_seed(spec.seed)
    model = model_class(config)
    with torch.no_grad():  # HF leaves biases at zero and norms at one; random ones make every tensor non-trivial
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, spec.init_std)
            elif name.endswith("norm.weight") and spec.family != "qwen2":
                param.normal_(1.0, spec.init_std)
    if spec.pretrain is not None:
        from esvllm.pretrain import pretrain

        pretrain(model, tokenizer, spec.pretrain)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def build_tokenizer(vocab_size: int | None = None):
    """A character-level fast tokenizer: one token per character, decoding fuses them back. With
    `vocab_size`, ids past the characters decode to words "[id]" (never produced by encoding), so a
    random model of a released vocabulary generates text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + CHARACTERS)}
    vocab.update({f"[{i}]": i for i in range(len(vocab), vocab_size or 0)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m esvllm.models", description="Build the built-in models, or "
                                     "write checkpoints with the exact shapes of Qwen2.5 models.")
    parser.add_argument("names", nargs="*", help=f"built-in models to build (default: all of {list(BUILTIN_MODELS)})")
    parser.add_argument("--qwen2.5", dest="qwen", choices=list(QWEN25_SHAPES), help="write a Qwen2.5-shaped checkpoint")
    parser.add_argument("--shape", choices=list(RELEASED_SHAPES), help="write the config.json of a Llama 3.x, "
                        "Qwen3 or Qwen3-MoE model (for --dry_run)")
    parser.add_argument("--out", help="its directory")
    parser.add_argument("--weights", action="store_true", help="random weights too (default: config.json only)")
    args = parser.parse_args(argv)
    if args.shape:
        if not args.out:
            parser.error("--shape needs --out DIR")
        print(write_released_shape(args.shape, Path(args.out)))
        return
    if args.qwen:
        if not args.out:
            parser.error("--qwen2.5 needs --out DIR")
        print(write_qwen25_shaped(args.qwen, Path(args.out), args.weights))
        return
    for name in args.names or list(BUILTIN_MODELS):
        print(resolve_model(name))


if __name__ == "__main__":
    main()
