"""Built-in models: small Qwen2-architecture checkpoints built here from a seed (no model hub).

`resolve_model("tiny")` builds (once) and returns the path of a Hugging Face checkpoint directory:
config.json, model.safetensors and a character-level tokenizer. Any other value must be a local HF
checkpoint directory (e.g. a downloaded Qwen2.5), returned as an absolute path.

    python -m esvllm.models tiny small      # build into the cache and print the paths

Shapes keep head_dim at 32 or 64: vLLM's CPU attention rejects 16.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import string
import tempfile
from pathlib import Path

from esvllm.pretrain import Recipe

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
# Printable ASCII with space and newline: enough for arithmetic prompts and answers.
CHARACTERS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]
VOCAB_SIZE = 128


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Shape of a built-in Qwen2 model; the seed fixes its random weights."""

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

    def digest(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True) + f"/vocab{VOCAB_SIZE}/v1"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


BUILTIN_MODELS = {
    # ~0.3M parameters, tied embeddings like Qwen2.5-0.5B/3B: for tests.
    "tiny": ModelSpec(128, 256, 2, 4, 2, tie_word_embeddings=True),
    # ~24M parameters, untied lm_head like Qwen2.5-7B: for benchmarks and the demo.
    "small": ModelSpec(512, 1536, 8, 8, 2, tie_word_embeddings=False),
    # ~100M parameters: for scaling figures.
    "medium": ModelSpec(768, 3072, 12, 12, 4, tie_word_embeddings=False),
    # tiny's shape, pre-trained on the addition task's pre-training problems: the CPU demo's base model.
    "adder": ModelSpec(128, 256, 2, 4, 2, tie_word_embeddings=True, pretrain=Recipe(period_fraction=0.6)),
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


def build_model(name: str, root: Path | None = None) -> Path:
    """Build built-in model `name` into the cache (atomically) unless it is there; return its path."""
    spec = BUILTIN_MODELS[name]
    target = (root or cache_dir()) / f"{name}-{spec.digest()}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        write_checkpoint(spec, staging)
        try:
            os.rename(staging, target)  # atomic: a concurrent builder may have won; theirs is equal
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_checkpoint(spec: ModelSpec, path: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    config = Qwen2Config(
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
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # HF leaves biases at zero; random ones make every tensor non-trivial
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, spec.init_std)
    if spec.pretrain is not None:
        from esvllm.pretrain import pretrain

        pretrain(model, tokenizer, spec.pretrain)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def build_tokenizer():
    """A character-level fast tokenizer: one token per character, decoding fuses them back."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


# The shapes of the Qwen2.5 models (their config.json): hidden, intermediate, layers, attention
# heads, KV heads, vocab, tied embeddings. "toy" is a small stand-in with the same structure.
QWEN25_SHAPES = {
    "toy": (256, 1024, 2, 4, 2, 1000, True),
    "0.5B": (896, 4864, 24, 14, 2, 151936, True),
    "1.5B": (1536, 8960, 28, 12, 2, 151936, True),
    "3B": (2048, 11008, 36, 16, 2, 151936, True),
    "7B": (3584, 18944, 28, 28, 4, 152064, False),
    "14B": (5120, 13824, 48, 40, 8, 152064, False),
}


def qwen25_config(size: str) -> dict:
    """A config.json with the exact shapes of Qwen2.5-`size` (for --dry_run and GPU checks)."""
    hidden, inter, layers, heads, kv_heads, vocab, tied = QWEN25_SHAPES[size]
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "vocab_size": vocab, "tie_word_embeddings": tied,
            "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
            "max_position_embeddings": 32768, "torch_dtype": "bfloat16", "bos_token_id": 151643,
            "eos_token_id": 151645}


def qwen2_tensors(size: str) -> dict[str, tuple]:
    """HF tensor names and shapes of Qwen2.5-`size` (a tied lm_head is not a tensor of its own)."""
    hidden, inter, layers, heads, kv_heads, vocab, tied = QWEN25_SHAPES[size]
    kv = hidden // heads * kv_heads
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.q_proj.bias": (hidden,),
            p + "self_attn.k_proj.weight": (kv, hidden), p + "self_attn.k_proj.bias": (kv,),
            p + "self_attn.v_proj.weight": (kv, hidden), p + "self_attn.v_proj.bias": (kv,),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
        })
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def write_qwen25_shaped(size: str, path: Path, weights: bool = False, dtype: str = "bfloat16") -> Path:
    """config.json of Qwen2.5-`size`, and with `weights` random weights (N(0, 0.02), seeded per tensor)."""
    import torch

    from engines.safetensors_io import write_sharded

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(qwen25_config(size), indent=2))
    if weights:
        def random_tensor(name, shape):
            seed = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")
            return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).mul_(0.02)

        entries = [(name, shape, getattr(torch, dtype), lambda n=name, s=shape: random_tensor(n, s))
                   for name, shape in qwen2_tensors(size).items()]
        write_sharded(path, entries)
    return path


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m esvllm.models", description="Build the built-in models, or "
                                     "write checkpoints with the exact shapes of Qwen2.5 models.")
    parser.add_argument("names", nargs="*", help=f"built-in models to build (default: all of {list(BUILTIN_MODELS)})")
    parser.add_argument("--qwen2.5", dest="qwen", choices=list(QWEN25_SHAPES), help="write a Qwen2.5-shaped checkpoint")
    parser.add_argument("--out", help="its directory")
    parser.add_argument("--weights", action="store_true", help="random weights too (default: config.json only)")
    args = parser.parse_args(argv)
    if args.qwen:
        if not args.out:
            parser.error("--qwen2.5 needs --out DIR")
        print(write_qwen25_shaped(args.qwen, Path(args.out), args.weights))
        return
    for name in args.names or list(BUILTIN_MODELS):
        print(resolve_model(name))


if __name__ == "__main__":
    main()
