"""Engine backends by name: the actor class that runs each (imported only when an engine starts).

    vllm   vLLM `LLM` with the ES worker extension (engines.vllm_actor): the engine
    hf     transformers `generate` on the same ES state (engines.hf_actor): the paper's original way
    fake   no model: text hashed from the weights' checksum (engines.fake), for fast tests
"""

from __future__ import annotations

import importlib

BACKENDS = {
    "vllm": "engines.vllm_actor:VLLMEngineActor",
    "hf": "engines.hf_actor:HFEngineActor",
    "fake": "engines.fake:FakeEngineActor",
}


def actor_class(name: str):
    if name not in BACKENDS:
        raise ValueError(f"engine backend {name!r}: use one of {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
