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
import sys
import tempfile
from pathlib import Path

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
}


def cache_dir() -> Path:
    return Path(os.environ.get("ESVLLM_CACHE", Path.home() / ".cache" / "esvllm")) / "models"


def resolve_model(name_or_path: str) -> str:
    """Path of an HF checkpoint: a built-in name (built on first use) or an existing directory."""
    if name_or_path in BUILTIN_MODELS:
        return str(build_model(name_or_path))
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model {name_or_path!r}: no HF checkpoint at {path.resolve()} (config.json missing). "
            f"Pass a local checkpoint directory or a built-in model: {', '.join(BUILTIN_MODELS)}"
        )
    return str(path.resolve())


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


def main(argv: list[str]) -> None:
    for name in argv or list(BUILTIN_MODELS):
        print(resolve_model(name))


if __name__ == "__main__":
    main(sys.argv[1:])
