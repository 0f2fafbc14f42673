"""The noise an engine keeps from its own perturbations: exact, bounded, never half-written.

These drive `engines.es_state.ESState` directly on plain CPU tensors (the engines use the same class;
tests/test_engine.py checks the reuse through real vLLM engines).
"""

import pytest
import torch

from engines.es_state import ESState
from kernels import noise

SHAPES = {"a.weight": (64, 32), "b.weight": (32,), "c.weight": (16, 64)}
MEMBER_BYTES = sum(torch.Size(s).numel() for s in SHAPES.values()) * 4


def base_weights() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=generator) * 0.05 for name, shape in SHAPES.items()}


class Model:
    """Stands in for the engine's parameters: a dict of tensors the ES state writes into."""

    def __init__(self, master: dict):
        self.master = master
        self.weights = {name: torch.empty(t.shape) for name, t in master.items()}
        self.fail_on: str | None = None

    def write_all(self, write):
        for name, tensor in self.master.items():
            if name == self.fail_on:
                raise RuntimeError(f"write of {name} failed")
            write(name, tensor, self.weights[name])

    def read_all(self, read):
        for name, served in self.weights.items():
            read(name, served)


def es_state(cache_bytes: int) -> tuple[ESState, Model]:
    model = Model(base_weights())
    return ESState(model.master, model.write_all, None, cache_bytes, read_all=model.read_all), model


def test_the_budget_sets_how_many_members_are_kept():
    assert es_state(0)[0].info()["noise_cache_slots"] == 0
    assert es_state(MEMBER_BYTES * 2 + 1)[0].info()["noise_cache_slots"] == 2


def test_members_beyond_the_budget_are_drawn_again_and_the_update_is_bit_identical(cpu_kernel):
    pairs = [(101, 0.3), (102, -0.2), (103, 0.1), (104, 0.05)]
    plain, plain_model = es_state(0)
    kept, model = es_state(MEMBER_BYTES * 2)
    for seed, _ in pairs:  # four members perturbed, two kept
        kept.perturb(seed, 0.01)
        plain.perturb(seed, 0.01)
        for name, shape in SHAPES.items():  # the perturbation itself is unchanged by the cache
            assert torch.equal(model.weights[name], plain_model.weights[name]), name
            expected = base_weights()[name] + 0.01 * noise(seed, name, shape)
            torch.testing.assert_close(model.weights[name], expected, rtol=1e-6, atol=1e-8)
    result, plain_result = kept.apply_update(pairs), plain.apply_update(pairs)
    assert result["noise_reused"] == 2 and plain_result["noise_reused"] == 0
    assert kept.checksum() == plain.checksum()
    assert result["update_norm"] == plain_result["update_norm"]


def test_kept_noise_is_released_by_the_update():
    es, _ = es_state(MEMBER_BYTES * 2)
    es.perturb(1, 0.01)
    assert es.apply_update([(1, 0.1)])["noise_reused"] == 1
    assert es.apply_update([(1, 0.1)])["noise_reused"] == 0  # a later iteration draws it again


def test_a_perturb_that_fails_half_way_keeps_no_noise():
    es, model = es_state(MEMBER_BYTES * 4)
    model.fail_on = "c.weight"
    with pytest.raises(RuntimeError, match="c.weight"):
        es.perturb(7, 0.01)
    model.fail_on = None
    assert es.apply_update([(7, 0.5)])["noise_reused"] == 0  # drawn again, not read from a half-filled buffer
    for name, shape in SHAPES.items():
        expected = base_weights()[name] + 0.5 * noise(7, name, shape)
        torch.testing.assert_close(model.master[name], expected, rtol=4e-7, atol=1e-8)
