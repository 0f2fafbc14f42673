"""Runs survive dead engines, on fake engines (engines.fake: the real ES state, no model).

Every disturbed run is compared with the undisturbed run of the same arguments: the same metrics
(timing aside) and the same final weights, bit for bit. The fleet (engines.fleet) and coordinator
code is the one that drives real vLLM engines; tests/test_failures.py repeats the key cases there.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from kernels import cpu, cpu_lib
from esvllm.checkpoint import latest_checkpoint, load_state
from kernels import noise
from esvllm.run import main
from esvllm.runlog import read_metrics

from tests.conftest import start_pool
from tests.helpers import FAKE, final_weights, run, same_weights, without_eval

FIVE = ["--num_iterations", "5", "--save_every", "1", "--keep_checkpoints", "2"]


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    """The undisturbed five-iteration fake run."""
    return run(tmp_path_factory.mktemp("fake"), "ref", FIVE, base=FAKE)


def disturbed(tmp_path, monkeypatch, fault, extra=()):
    monkeypatch.setenv("ESVLLM_FAKE_DIE_ON_CALL", fault)
    return run(tmp_path, "run", [*FIVE, *extra], base=FAKE)


def assert_same_run(run_dir, reference, engines=2):
    records = read_metrics(run_dir)
    assert all(r["engines"] == engines for r in records)  # a replacement joined: no run went on short-handed
    assert without_eval(records) == without_eval(read_metrics(reference))
    assert same_weights(final_weights(run_dir), final_weights(reference))


def test_the_final_weights_equal_base_plus_the_logged_updates(reference, tiny_model):
    base = load_file(f"{tiny_model}/model.safetensors")
    final = final_weights(reference)
    records = read_metrics(reference)
    assert len(records) == 5 and all(r["checksum"] for r in records)
    for name, weight in base.items():
        expected = weight.clone()
        for record in records:  # z-scores recomputed here from the logged rewards
            r = torch.tensor(record["rewards"], dtype=torch.float64)
            z = (r - r.mean()) / r.std(unbiased=False)
            for seed, zi in zip(record["seeds"], z.tolist()):
                expected += 0.01 / len(r) * zi * noise(seed, name, weight.shape)
        torch.testing.assert_close(final[name], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fault", ["1:3", "0:generate:4"], ids=["mid_perturb", "mid_generate"])
def test_an_engine_that_dies_mid_rollout_is_replaced_and_the_result_is_unchanged(reference, tmp_path, monkeypatch, fault):
    run_dir = disturbed(tmp_path, monkeypatch, fault)
    assert sum(r["engine_restarts"] for r in read_metrics(run_dir)) == 1
    assert_same_run(run_dir, reference)


@pytest.mark.parametrize("method", ["apply_update", "checksum"])
def test_an_engine_that_dies_during_a_broadcast_is_replaced_and_the_result_is_unchanged(
        reference, tmp_path, monkeypatch, method):
    run_dir = disturbed(tmp_path, monkeypatch, f"1:{method}:2")
    assert sum(r["engine_restarts"] for r in read_metrics(run_dir)) == 1
    assert_same_run(run_dir, reference)


def test_an_engine_that_dies_while_resume_replays_the_log_ends_in_step(reference, tmp_path, monkeypatch):
    # Three iterations, then every checkpoint is lost: the resumed engines replay all three updates
    # from the base model, and engine 1 dies at its second replayed update.
    first = run(tmp_path, "run", [*FIVE, "--num_iterations", "3"], base=FAKE)
    shutil.rmtree(first / "checkpoints")
    shutil.rmtree(first / "final")
    monkeypatch.setenv("ESVLLM_FAKE_DIE_ON_CALL", "1:apply_update:2")
    from esvllm.run import main

    resumed = main(["--resume", str(first), "--num_iterations", "5"])
    records = read_metrics(resumed)
    assert records[3]["engine_restarts"] == 1  # replaced during the replay, counted in the next iteration
    assert_same_run(resumed, reference)  # every iteration's sync check passed: no update applied twice


def test_a_resume_outlives_the_checkpoint_it_started_from(reference, tmp_path):
    # Engines start from checkpoints/iter_000003/model; --keep_checkpoints 2 prunes it two
    # iterations later, and the last checkpoint and final/ must still be written.
    first = run(tmp_path, "run", [*FIVE, "--num_iterations", "3"], base=FAKE)
    shutil.rmtree(first / "final")
    from esvllm.run import main

    resumed = main(["--resume", str(first), "--num_iterations", "5"])
    assert not (resumed / "checkpoints" / "iter_000003").exists()
    assert_same_run(resumed, reference)


def test_a_replacement_outlives_the_checkpoint_it_started_from(reference, tmp_path, monkeypatch):
    run_dir = disturbed(tmp_path, monkeypatch, "1:10")  # dies in iteration 2: starts from iter_000001
    assert not (run_dir / "checkpoints" / "iter_000001").exists()
    assert_same_run(run_dir, reference)


def block_replacements(monkeypatch, tmp_path) -> None:
    """Engines started again after a death fail to load (their model path does not exist)."""
    from engines.pool import EnginePool

    spawn = EnginePool.spawn

    def replacements_cannot_load(self, index, model_path=None):
        if index in self.spawned:
            model_path = str(tmp_path / "missing-model")
        return spawn(self, index, model_path)

    monkeypatch.setattr(EnginePool, "spawn", replacements_cannot_load)


def test_when_no_engine_can_start_the_run_saves_a_checkpoint_and_stops(tmp_path, monkeypatch, ray_session):
    from engines.updatelog import UpdateLog

    block_replacements(monkeypatch, tmp_path)
    with pytest.raises(SystemExit, match="error: every engine died.*checkpoint saved"):  # no traceback
        disturbed(tmp_path, monkeypatch, "0:12", ["--num_engines", "1"])
    [run_dir] = [p.parent for p in tmp_path.glob("*/*/engines.json")]
    state = load_state(latest_checkpoint(run_dir))
    assert state["iteration"] == len(UpdateLog.load(run_dir)) == len(read_metrics(run_dir)) >= 1


def test_a_reward_that_always_raises_stops_the_run_naming_its_exception(tmp_path, ray_session):
    with pytest.raises(SystemExit, match="error: iteration 0: the reward raised on every sample.*broken reward"):
        run(tmp_path, "run", ["--reward", "tests.reward_helpers:always_raises"], base=FAKE)


def test_engines_out_of_step_stop_the_run_with_both_checksums(ray_session, tiny_model):
    from engines.fleet import EnginesDisagree, Fleet
    from engines.updatelog import UpdateLog

    pool = start_pool(tiny_model, backend="fake", num_engines=2)
    try:
        fleet = Fleet(pool, UpdateLog())
        fleet.check_sync(0)  # in step
        pool.engines[0].apply_update([(1234, 1e-4)])
        with pytest.raises(EnginesDisagree, match="engine 0 .* engine 1"):
            fleet.check_sync(7)
    finally:
        pool.shutdown()


def test_wandb_offline_gets_the_config_and_the_same_scalars(tmp_path, monkeypatch, ray_session):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = run(tmp_path, "wb", ["--wandb_project", "esvllm-test", "--eval_every", "3"], base=FAKE)
    [log] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    content = log.read_bytes()  # wandb's own record file: our keys and config appear in it as text
    for key in (b"reward/mean", b"es/update_norm", b"eval/reward", b"population_size"):
        assert key in content, key
    assert (run_dir / "wandb_id").read_text().strip() in log.name  # a resume continues this wandb run


@pytest.mark.parametrize("where, says", [("", "hold different base weights (master checksums engine 0"),
                                         (":served", "serve different weights (served checksums engine 0")])
def test_engines_that_compute_different_weights_stop_the_run_at_the_state_they_agreed_on(where, says, reference,
                                                                                         tmp_path, monkeypatch):
    # Engine 1 gets one value wrong in its third update: in its master (an update kernel's fault) or
    # only in the weights it serves (a write kernel's fault, which a master checksum cannot see).
    monkeypatch.setenv("ESVLLM_FAKE_CORRUPT", f"1:3{where}")
    with pytest.raises(SystemExit) as stop:  # one message, no traceback
        run(tmp_path, "run", FIVE, base=FAKE)
    message = str(stop.value.code)
    assert message.startswith(f"error: after iteration 2 the engines {says}")
    assert "engine 1" in message and "engines.json" in message and "kernel level and CPU" in message
    [run_dir] = [p.parent for p in tmp_path.glob("*/*/engines.json")]
    assert f"--resume {run_dir}" in message
    state = load_state(latest_checkpoint(run_dir))
    assert state["iteration"] == 2 and state["model_iteration"] == 2  # the periodic checkpoint, kept whole
    assert (latest_checkpoint(run_dir) / "model" / "model.safetensors").is_file()
    monkeypatch.delenv("ESVLLM_FAKE_CORRUPT")
    main(["--resume", str(run_dir)])  # from the state both engines agreed on: the undisturbed result
    assert_same_run(run_dir, reference)


def test_a_run_whose_best_cpu_kernel_is_wrong_trains_on_the_next_level_down(reference, tmp_path, monkeypatch):
    compiler = cpu_lib.find_compiler()
    if compiler is None:
        pytest.skip("no C compiler: only the torch reference runs here")
    levels = cpu_lib.supported_levels(compiler) + [cpu.REFERENCE]
    monkeypatch.setenv("ESVLLM_KERNEL_FAULT", levels[0])  # the engines' best level is built wrong
    run_dir = run(tmp_path, "run", FIVE, base=FAKE)
    for engine in json.loads((run_dir / "engines.json").read_text()):
        assert engine["cpu_kernel"] == levels[1] and list(engine["cpu_kernel_refused"]) == [levels[0]]
        assert engine["cpu"] == cpu_lib.cpu_model()
    assert_same_run(run_dir, reference)


@pytest.mark.parametrize("damage", ["truncated_shard", "missing_model"])
def test_resume_skips_a_broken_latest_checkpoint_with_a_warning(reference, tmp_path, damage, caplog):
    import logging

    run_dir = run(tmp_path, "run", [*FIVE, "--num_iterations", "3"], base=FAKE)
    broken = latest_checkpoint(run_dir)
    assert broken.name == "iter_000003"
    shard = broken / "model" / "model.safetensors"
    if damage == "truncated_shard":  # a disk that filled, a copy cut short
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    else:
        shutil.rmtree(broken / "model")
    with caplog.at_level(logging.WARNING, logger="esvllm.checkpoint"):
        main(["--resume", str(run_dir), "--num_iterations", "5"])
    [warning] = [r.getMessage() for r in caplog.records if r.name == "esvllm.checkpoint"]
    assert str(broken) in warning and ("truncated" in warning or "missing" in warning)
    assert_same_run(run_dir, reference)  # from iter_000002 and the update log: the undisturbed result


def test_a_low_rank_run_that_loses_an_engine_runs_more_rounds_on_the_others_with_the_same_result(tmp_path,
                                                                                               monkeypatch,
                                                                                               ray_session):
    lowrank = [*FIVE, "--perturbation", "lowrank", "--rank", "2"]
    whole = run(tmp_path, "whole", lowrank, base=FAKE)
    block_replacements(monkeypatch, tmp_path)
    monkeypatch.setenv("ESVLLM_FAKE_DIE_ON_CALL", "1:apply_update:2")  # engine 1 dies in iteration 1's update
    short = run(tmp_path, "short", lowrank, base=FAKE)
    records = read_metrics(short)
    assert [r["engines"] for r in records][-1] == 1  # the rest ran on one engine, two batches each
    assert without_eval(records) == without_eval(read_metrics(whole))
    assert same_weights(final_weights(short), final_weights(whole))


@pytest.mark.parametrize("level", ["portable", "torch"])
def test_a_run_capped_to_a_lower_cpu_kernel_level_records_it_and_ends_bit_identical(reference, tmp_path, monkeypatch,
                                                                                     level):
    monkeypatch.setenv("ESVLLM_CPU_KERNEL", level)  # what a user sets for `python -m esvllm.run`
    run_dir = run(tmp_path, "run", FIVE, base=FAKE)
    assert [e["cpu_kernel"] for e in json.loads((run_dir / "engines.json").read_text())] == [level, level]
    assert_same_run(run_dir, reference)  # every level computes the same bits
