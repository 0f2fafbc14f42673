"""The noise definition: i.i.d. N(0,1) per element, independent across tensors and members."""

import math

import pytest
import torch

from esvllm.noise import noise, stream_seed


def corr(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def test_same_shape_tensors_of_one_seed_are_uncorrelated():
    a = noise(7, "model.layers.0.self_attn.q_proj.weight", (256, 256))
    b = noise(7, "model.layers.0.self_attn.o_proj.weight", (256, 256))
    assert abs(corr(a, b)) < 5 / math.sqrt(a.numel())


def test_one_tensor_under_two_seeds_is_uncorrelated():
    a = noise(7, "model.norm.weight", (256, 256))
    b = noise(8, "model.norm.weight", (256, 256))
    assert abs(corr(a, b)) < 5 / math.sqrt(a.numel())


def test_seed_plus_index_overlap_of_the_old_code_is_gone():
    # The earlier code seeded tensor i of member s with s + i: member s's tensor 1 == member s+1's tensor 0.
    assert not torch.equal(noise(5, "t1", (64,)), noise(6, "t0", (64,)))
    assert stream_seed(5, "t1") != stream_seed(6, "t0")


@pytest.mark.parametrize("shape", [(128,), (256, 128), (1536, 512)])
def test_every_tensor_has_mean_zero_and_unit_std(shape):
    eps = noise(123, f"tensor{shape}", shape)
    n = eps.numel()
    assert abs(float(eps.mean())) < 5 / math.sqrt(n)
    assert abs(float(eps.std()) - 1) < 5 / math.sqrt(n)


def test_noise_is_a_pure_function_of_seed_and_name():
    assert torch.equal(noise(2**31 - 1, "x", (1000,)), noise(2**31 - 1, "x", (1000,)))


@pytest.mark.parametrize("bad_seed", [-1, 2**31])
def test_seed_outside_31_bits_is_rejected(bad_seed):
    with pytest.raises(ValueError, match=str(bad_seed)):
        noise(bad_seed, "x", (4,))
