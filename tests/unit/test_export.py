"""Exports are written one tensor at a time, in shards with the standard index, and load as written."""

import json

import torch
from safetensors.torch import load_file

from engines.es_state import ESState
from engines.safetensors_io import write_sharded


def tensors():
    generator = torch.Generator().manual_seed(0)
    return {f"t{i}": torch.randn(100 + i, 7, generator=generator) for i in range(5)}


def test_small_shards_split_the_tensors_in_order_and_the_index_names_each_ones_file(tmp_path):
    data = tensors()
    produced = []

    def producer(name):
        produced.append(name)  # each tensor is made only when its turn comes
        return data[name]

    entries = [(n, tuple(t.shape), torch.bfloat16, lambda n=n: producer(n)) for n, t in data.items()]
    names = write_sharded(tmp_path, entries, max_shard_bytes=3000)  # 1400..1456 bytes each: pairs, then one
    assert produced == list(data) and len(names) == 3
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    loaded = {}
    for file in names:
        loaded.update(load_file(str(tmp_path / file)))
    assert set(index["weight_map"]) == set(data) and all((tmp_path / f).is_file() for f in index["weight_map"].values())
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in data.values())
    assert all(torch.equal(loaded[n], data[n].bfloat16()) for n in data)


def test_an_export_in_the_model_dtype_loads_in_transformers(tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    from engines.safetensors_io import load_checkpoint

    master = load_checkpoint(tiny_model, "cpu", torch.float32)
    es = ESState(master, lambda write: None, tiny_model)
    path = es.export(str(tmp_path / "final"), "bfloat16")
    assert json.loads((tmp_path / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(path)
    for name, param in model.named_parameters():
        assert param.dtype == torch.bfloat16 and torch.equal(param, master[name].bfloat16()), name
