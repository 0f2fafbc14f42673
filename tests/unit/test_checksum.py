"""The engines' weight checksums: the C kernel and the torch code compute the definition exactly,
and the served checksum reads the weights the model computes with, so a restore or a kernel that
writes wrong values is seen (the master checksum alone cannot see it)."""

import pytest
import torch

from engines.es_state import ESState
from kernels import Slice, cpu, reference
from kernels.cpu_lib import checksum_rows


def definition(ints: torch.Tensor, row0: int, col0: int, row_stride: int) -> tuple[int, int]:
    """sum v and sum v * (i % 7 + 1), i = (row0 + r) * row_stride + col0 + c, in Python integers."""
    total = positional = 0
    for r, row in enumerate(ints.tolist()):
        for c, v in enumerate(row):
            total += v
            positional += v * (((row0 + r) * row_stride + col0 + c) % 7 + 1)
    return total, positional


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16])
@pytest.mark.parametrize("where", [(0, 0, 0), (0, 0, 37), (5, 3, 40), (2, 11, 13)])
def test_the_c_kernel_and_the_torch_code_compute_the_definition(dtype, where):
    info = torch.iinfo(dtype)
    ints = torch.randint(info.min, info.max, (9, 37), dtype=dtype, generator=torch.Generator().manual_seed(3))
    ints[0, 0], ints[1, 1] = info.min, info.max  # the extremes
    expected = definition(ints, *where)
    assert checksum_rows(ints, *where, lib=cpu.library()) == expected
    assert reference.checksum(ints, Slice(*where)) == expected


def test_the_c_kernel_sums_exactly_past_its_int64_chunk():
    # 2**24 + 9 elements at the largest int32 value: the chunk's int64 sums roll into 128 bits.
    ints = torch.full((1, 2**24 + 9), torch.iinfo(torch.int32).max, dtype=torch.int32)
    ints[0, -3:] = torch.iinfo(torch.int32).min
    assert checksum_rows(ints, 0, 0, 0, lib=cpu.library()) == reference.checksum(ints, Slice(0, 0, 0))


class Backend:
    """A model of plain tensors, as engines.fake holds; `faults` make its writes go wrong."""

    def __init__(self, master: dict[str, torch.Tensor], dtype=torch.float32, faults=()):
        self.weights = {name: torch.empty(t.shape, dtype=dtype) for name, t in master.items()}
        self.faults = set(faults)
        self.es = ESState(master, self.write_all, None, read_all=self.read_all)
        self.es.restore()

    def write_all(self, write):
        restoring = self.es.perturbation is not None
        for name, master in self.es.tensors().items():
            if "restore_writes_nothing" in self.faults and restoring:
                continue
            write(name, master, self.weights[name])
        if "one_wrong_element" in self.faults:
            next(iter(self.weights.values())).view(-1)[7] += 1e-3

    def read_all(self, read):
        for name, served in self.weights.items():
            read(name, served)


def model(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(64, 48, generator=generator), "b": torch.randn(48, generator=generator)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_served_checksum_digests_the_served_bits_by_an_independent_computation(dtype, cpu_kernel):
    backend = Backend(model(), dtype)
    backend.es.perturb(5, 0.01)
    want = {}
    for name, served in backend.weights.items():  # the definition, in Python integers
        ints = served.view(torch.int32 if dtype == torch.float32 else torch.int16).reshape(1, -1).to(torch.int64)
        index = torch.arange(ints.numel())
        want[name] = (int(ints.sum()), int((ints[0] * (index % 7 + 1)).sum()))
    assert backend.es.served_parts() == want


def test_a_restore_that_writes_nothing_is_seen_by_the_served_checksum():
    good, bad = Backend(model()), Backend(model(), faults={"restore_writes_nothing"})
    for backend in (good, bad):
        backend.es.perturb(3, 0.01)
    got_good, got_bad = good.es.restore(), bad.es.restore()
    assert got_good["master"] == got_bad["master"]  # the masters agree: a master checksum cannot see it
    assert got_good["served"] != got_bad["served"]
    assert not torch.equal(bad.weights["w"], bad.es.tensors()["w"])  # and the fault is real


def test_one_wrong_element_written_is_seen_by_the_served_checksum():
    good, bad = Backend(model()), Backend(model(), faults={"one_wrong_element"})
    for backend in (good, bad):
        backend.es.apply_update([(9, 1e-3)])
    assert good.es.checksum()["master"] == bad.es.checksum()["master"]
    assert good.es.checksum()["served"] != bad.es.checksum()["served"]


def test_after_restore_the_served_checksum_of_an_fp32_model_equals_its_master_checksum(cpu_kernel):
    backend = Backend(model())
    backend.es.perturb(3, 0.01)
    perturbed = backend.es.checksum()
    assert perturbed["served"] != perturbed["master"]
    restored = backend.es.restore()
    assert restored["served"] == restored["master"] == perturbed["master"]


def test_the_c_kernel_and_the_torch_reference_give_one_checksum(monkeypatch, cpu_kernel):
    master = {"a": torch.randn(64, 48), "b": torch.randn(7).to(torch.bfloat16)}
    state = ESState(master, lambda write: None, None)
    fast = state.master_checksum()
    monkeypatch.setattr(cpu, "library", lambda: None)  # as without a C compiler
    assert state.master_checksum() == fast
    master["a"][3, 5] += 1e-3  # and it sees a change
    assert state.master_checksum() != fast


def test_a_state_without_a_model_refuses_a_served_checksum():
    with pytest.raises(RuntimeError, match="no model to read"):
        ESState(model(), lambda write: None, None).checksum()
