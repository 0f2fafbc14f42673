"""ES options beyond the paper: each update equals an independent float64 computation, engines stay in
step with every option, optimizer state survives a resume, antithetic pairs share one noise draw."""

import math

import pytest
import torch

from engines.es_state import ESState
from esvllm.es import antithetic_coefficients, scheduled, tell
from kernels import noise


SHAPES = {"a.weight": (48, 32), "b.bias": (48,), "c.weight": (16, 48)}


def state(cache_bytes=0):
    generator = torch.Generator().manual_seed(0)
    master = {n: torch.randn(s, generator=generator) * 0.05 for n, s in SHAPES.items()}
    weights = {n: torch.empty(s) for n, s in SHAPES.items()}

    def write_all(write):
        for n, t in master.items():
            write(n, t, weights[n])

    return ESState(master, write_all, None, cache_bytes), master, weights


UPDATES = [[(11, 0.3), (12, -0.2), (13, 0.1)], [(21, -0.05), (22, 0.4)], [(31, 0.2), (32, 0.2), (33, -0.1)]]


def expected(optimizer, base, alpha=0.01, decay=0.0):
    """The optimizer's trajectory in float64, from the noise definition."""
    theta = {n: t.double().clone() for n, t in base.items()}
    m = {n: torch.zeros_like(t) for n, t in theta.items()}
    v = {n: torch.zeros_like(t) for n, t in theta.items()}
    for t, pairs in enumerate(UPDATES, start=1):
        for n in theta:
            g = sum(c * noise(s, n, theta[n].shape).double() for s, c in pairs)
            theta[n] *= 1 - alpha * decay
            if optimizer == "sgd":
                theta[n] += g
            elif optimizer == "momentum":
                m[n] = 0.9 * m[n] + g
                theta[n] += alpha * m[n]
            else:
                m[n] = 0.9 * m[n] + 0.1 * g
                v[n] = 0.999 * v[n] + 0.001 * g * g
                theta[n] += alpha * (m[n] / (1 - 0.9**t)) / ((v[n] / (1 - 0.999**t)).sqrt() + 1e-8)
    return theta


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_each_optimizer_update_equals_a_float64_computation(optimizer, decay, cpu_kernel):
    es, master, _ = state()
    base = {n: t.clone() for n, t in master.items()}
    for t, pairs in enumerate(UPDATES, start=1):
        options = {} if optimizer == "sgd" else {"optimizer": optimizer, "alpha": 0.01, "step": t, "momentum": 0.9}
        if decay:
            options.update(weight_decay=decay, alpha=0.01)
        es.apply_update(pairs, options)
    for n, want in expected(optimizer, base, decay=decay).items():
        torch.testing.assert_close(master[n].double(), want, rtol=2e-5, atol=1e-7)


def test_an_antithetic_pair_draws_its_noise_once_and_the_update_reuses_it(cpu_kernel):
    es, master, weights = state(cache_bytes=0)  # no noise cache: the mirror keeps the draw
    base = {n: t.clone() for n, t in master.items()}
    assert es.perturb(5, 0.1, 1, mirror=True)["drawn"] is True
    assert es.perturb(5, 0.1, -1)["drawn"] is False
    for n in SHAPES:
        torch.testing.assert_close(weights[n], base[n] - 0.1 * noise(5, n, SHAPES[n]), rtol=1e-6, atol=1e-7)
    result = es.apply_update([(5, 0.5)])
    assert (result["perturb_draws"], result["noise_reused"]) == (1, 1)
    for n in SHAPES:
        torch.testing.assert_close(master[n], base[n] + 0.5 * noise(5, n, SHAPES[n]), rtol=1e-6, atol=1e-7)


def test_the_antithetic_estimator_has_the_mirrored_form():
    rewards = [3.0, 1.0, 0.5, 2.5]  # pairs (+eps_0, -eps_0), (+eps_1, -eps_1)
    pairs, _ = tell(rewards, [100, 200], 0.2, antithetic=True)
    mean = sum(rewards) / 4
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / 4)
    z = [(r - mean) / std for r in rewards]
    assert [s for s, _ in pairs] == [100, 200]
    assert [c for _, c in pairs] == pytest.approx([0.2 / 4 * (z[0] - z[1]), 0.2 / 4 * (z[2] - z[3])])
    assert antithetic_coefficients([1.0, -1.0], 0.5) == [1.0]


def test_schedules_go_from_start_to_final():
    assert [scheduled("linear", 1.0, 0.1, i, 4) for i in range(4)] == pytest.approx([1.0, 0.7, 0.4, 0.1])
    assert scheduled("cosine", 1.0, 0.1, 0, 5) == 1.0 and scheduled("cosine", 1.0, 0.1, 4, 5) == pytest.approx(0.1)
    assert scheduled("cosine", 1.0, 0.0, 2, 5) == pytest.approx(0.5)


def test_paper_correlated_noise_gives_same_shaped_tensors_the_same_noise():
    # The paper's first scripts seeded every tensor with the member's seed: one stream for all tensors.
    shapes = {"x.weight": (8, 4), "y.weight": (8, 4), "z.bias": (8,)}
    perturbed = {}
    for mode in ("iid", "paper_correlated"):
        master = {n: torch.zeros(s) for n, s in shapes.items()}
        weights = {n: torch.empty(s) for n, s in shapes.items()}

        def write_all(write, master=master, weights=weights):
            for n, t in master.items():
                write(n, t, weights[n])

        ESState(master, write_all, None, 0, noise_mode=mode).perturb(5, 1.0)
        perturbed[mode] = weights
    correlated, iid = perturbed["paper_correlated"], perturbed["iid"]
    assert torch.equal(correlated["x.weight"], correlated["y.weight"])
    assert torch.equal(correlated["x.weight"], noise(5, "", (8, 4)))  # the one stream, from its start
    assert torch.equal(correlated["z.bias"], noise(5, "", (8,)))
    assert not torch.equal(iid["x.weight"], iid["y.weight"])
    assert torch.equal(iid["x.weight"], noise(5, "x.weight", (8, 4)))


def test_mini_batches_split_each_members_prompts_into_several_generate_calls_in_order():
    from engines.actor_base import EngineActorBase

    class Recorder(EngineActorBase):
        def __init__(self):
            self.calls = []

        def perturb(self, *args):
            return None

        def generate(self, prompts, sampling):
            self.calls.append(list(prompts))
            return [{"text": p.upper(), "tokens": 1} for p in prompts]

    engine, prompts = Recorder(), ["a", "b", "c", "d", "e"]
    result = engine.rollout(3, 0.1, prompts, {}, mini_batch=2)
    assert engine.calls == [["a", "b"], ["c", "d"], ["e"]]
    [member] = result["members"]
    assert [c["text"] for c in member["completions"]] == ["A", "B", "C", "D", "E"]




@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_update_options_survive_the_update_log_with_the_defaults_in_one_place(optimizer):
    from engines.updatelog import UpdateLog
    from engines.variant import UpdateOptions
    from esvllm.es import tell

    hyper = {"momentum": {"momentum": 0.5}, "adam": {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6}}.get(optimizer, {})
    _, options = tell([1.0, 2.0], [1, 2], 0.01, optimizer=optimizer, step=3, weight_decay=0.1, hyper=hyper)
    log = UpdateLog()
    log.append([(1, 0.5)], options.to_log())
    [(_, logged)] = log.pairs()
    assert UpdateOptions.from_log(logged) == options  # what a replay applies is what the run applied
    assert UpdateOptions.from_log({}) == UpdateOptions(optimizer="sgd", alpha=1.0, weight_decay=0.0)


def test_an_unknown_optimizer_in_an_update_is_refused():
    from engines.variant import UpdateOptions

    with pytest.raises(ValueError, match="optimizer 'lion'"):
        UpdateOptions.from_log({"optimizer": "lion"})
