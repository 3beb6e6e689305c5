"""Elastic resume: a run saved with N processes x W workers continues on M x V. Unit tests of the checkpoint
layout routes (maeast.train.layout; the loader re-deal has its own, tests/test_elastic_redeal.py); end-to-end
runs of 2 -> 1 and 1 -> 2 processes (ZeRO-2, ZeRO-3) mid-epoch, a refused layout, and a rank killed mid-run."""

from __future__ import annotations

import hashlib
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from maeast.artifacts import latest_checkpoint
from maeast.pretrain import load_config, pretrain
from maeast.train.layout import Layout, resume_route, saved_layout
from maeast.errors import MaeastError
from maeast.loaders import StreamingLoader
from maeast.loaders.elastic import regroup
from maeast.loaders.state import LoaderState
from tests.conftest import make_demo_shards
from tests.test_engine_distributed import (ROOT, TIMEOUT, launch_env_vars, start_env_vars, step_keys,
                                           train_records)


def rank_state(rank, world, workers, batches, positions, epoch=0, bad=0):
    s = LoaderState(epoch, 0, world, workers, rank, list(batches), list(positions))
    s.stats["bad_samples"] = bad
    return s.to_dict()


def even(epoch, world, workers):
    """Every slot of 4 gets 3 batches, however they are grouped."""
    return [[3] * max(workers, 1) for _ in range(world)]


def test_same_layout_is_the_merged_state():
    states = [rank_state(0, 2, 1, [1], [1]), rank_state(1, 2, 1, [1], [2])]
    assert regroup(states, 1, 2, 1, even, 2) == {**states[0], "ranks": {**states[0]["ranks"], **states[1]["ranks"]}}


def test_epoch_boundary_takes_any_layout():
    states = [rank_state(0, 2, 1, [0], [0], epoch=2), rank_state(1, 2, 1, [0], [0], epoch=2)]
    new = regroup(states, 2, 3, 2, even, 6)
    assert new["epoch"] == 2 and new["ranks"]["2"]["positions"] == [0, 0]


def test_layout_routes():
    z = lambda world, stage, bf16=False: Layout(world, stage, bf16)  # noqa: E731
    assert resume_route(z(2, 2), z(2, 2), "ck") == "native"
    assert resume_route(z(2, 0), z(1, 0), "ck") == "native"
    assert resume_route(z(2, 2), z(1, 2), "ck") == "universal"
    assert resume_route(z(2, 1), z(4, 2), "ck") == "universal"
    assert resume_route(z(2, 3), z(1, 3), "ck") == "universal"
    for saved, now in [(z(2, 0), z(2, 2)), (z(2, 2), z(1, 3)), (z(1, 3), z(2, 1)), (z(1, 2, True), z(1, 2))]:
        with pytest.raises(MaeastError, match=re.escape(f"saved with {saved}, this run has {now}")):
            resume_route(saved, now, "ck")
    # the case: ZeRO-2 on 2 processes resumed by `maeast pretrain --resume` (stage 0, 1 process)
    with pytest.raises(MaeastError, match=re.escape("resume with --deepspeed_config launch/ds_zero2.json (on any "
                                                    "number of processes)")):
        resume_route(z(2, 2), z(1, 0), "ck")


def test_saved_layout_recorded_or_inferred(tmp_path):
    torch.save({"step": 1, "world_size": 2, "layout": Layout(2, 3, False).to_dict()}, tmp_path / "state_rank0.pt")
    assert saved_layout(tmp_path) == Layout(2, 3, False)
    torch.save({"step": 1, "world_size": 2}, tmp_path / "state_rank0.pt")  # written before layouts were recorded
    assert saved_layout(tmp_path) == Layout(2, 0, False)
    for r in range(2):
        (tmp_path / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").touch()
    assert saved_layout(tmp_path, {"zero_optimization": {"stage": 2}}) == Layout(2, 2, False)
    (tmp_path / "zero_pp_rank_0_mp_rank_00_model_states.pt").touch()
    assert saved_layout(tmp_path, {"bf16": {"enabled": True}}) == Layout(2, 3, True)


# ---- end to end: real processes on CPU over gloo ------------------------------------------------

# 2 slots (2 processes x 1 worker, or 1 x 2) of 2 clips, 4 per step: epoch 0 of the tiny corpus ends within 8 steps
RUN = ["schedule.steps=8", "schedule.warmup_steps=1", "data.batch_size=2", "optim.global_batch=4", "eval.every=0",
       "run.save_every_steps=2", "run.log_every=1", "run.trace_keys=true", "run.collective_timeout=30"]
ZERO_JSON = {stage: str(ROOT / "launch" / f"ds_zero{stage}.json") for stage in (2, 3)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_demo_shards(tmp_path_factory.getbasetemp() / "engine_demo")


def args(shards: Path, run_dir: Path, stage: int, *extra: str) -> list[str]:
    return ["--deepspeed_config", ZERO_JSON[stage], "--config", "pretrain_tiny",
            *[f"--{o}" for o in [*RUN, f"data.shards=[{shards}]", f"run.dir={run_dir}", *extra]]]


def in_process(shards: Path, run_dir: Path, stage: int, *extra: str, resume: bool = False):
    """One process, two loader workers (the same slots as 2 processes x 1 worker), in this process (a run that
    builds a ZeRO-3 engine goes through one_process)."""
    cfg = load_config("pretrain_tiny", [*RUN, f"data.shards=[{shards}]", f"run.dir={run_dir}", "data.num_workers=2",
                                        *extra])
    return pretrain(cfg, ZERO_JSON[stage], resume=resume)


def one_process(shards: Path, run_dir: Path, stage: int, *extra: str) -> None:
    """As in_process, in a process of its own: DeepSpeed's ZeRO-3 replaces torch functions (linear) for the
    rest of the process that builds it, which moved later in-process runs of other test files off bitwise."""
    launch_env_vars(args(shards, run_dir, stage, "data.num_workers=2", *extra), world=1)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> dict[int, Path]:
    """Run folders of uninterrupted runs: ZeRO-2 on 1 process x 2 workers (whose first 5 steps are those of 2
    processes x 1 worker), ZeRO-3 on 1 process x 1 worker."""
    runs = {stage: tmp_path_factory.mktemp(f"reference{stage}") for stage in (2, 3)}
    in_process(shards, runs[2], 2)
    one_process(shards, runs[3], 3, "data.num_workers=1")
    return runs


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_records(run_dir)}


def planned_steps(shards: Path, world: int, workers: int, epoch: int) -> list[list[str]]:
    """The keys of every step of `epoch` as the loader plans it for world x workers (slot order per step)."""
    cfg = load_config("pretrain_tiny", [*RUN, f"data.shards=[{shards}]", f"data.num_workers={workers}"])
    ranks = []
    for rank in range(world):
        loader = StreamingLoader(cfg.loader_config(), rank, world)
        loader.set_epoch(epoch)
        ranks.append([batch.keys for batch in loader])
    accum = cfg.optim.global_batch // (cfg.data.batch_size * world)
    steps = len(ranks[0]) // accum
    return [sorted(k for r in ranks for b in r[s * accum:(s + 1) * accum] for k in b) for s in range(steps)]


def slot_keys(run_dir: Path) -> dict[tuple[int, int], list[str]]:
    """A run's key traces as {(step, micro-batch slot): its clips' keys, sorted}."""
    out: dict[tuple[int, int], list[str]] = {}
    for path in sorted((run_dir / "keys").glob("rank*.tsv")):
        for line in path.read_text().splitlines():
            step, slot, key = line.split("\t")
            out.setdefault((int(step), int(slot)), []).append(key)
    return {k: sorted(v) for k, v in out.items()}


def assert_epochs(run_dir: Path, shards: Path, saved: tuple[int, int], now: tuple[int, int]) -> int:
    """Epoch 0 as the saved layout planned it, each clip once across both parts (the rests of these runs divide
    evenly over the new processes, so none is left out); then epoch 1 as a run that always had the new layout
    sees it. Returns the steps of epoch 0."""
    ours = step_keys(run_dir)
    assert sorted(ours) == list(range(1, 9))
    first = planned_steps(shards, *saved, epoch=0)
    keys = [k for step in first for k in step]
    assert len(keys) == len(set(keys)), "the plan itself repeats a clip"
    assert 3 < len(first) < 8  # the kill or stop came inside epoch 0, and epoch 1 began before the end
    assert [ours[s] for s in range(1, len(first) + 1)] == first  # none lost, none repeated, in its steps
    later = planned_steps(shards, *now, epoch=1)[:8 - len(first)]
    assert [ours[s] for s in range(len(first) + 1, 9)] == later
    return len(first)


def assert_curve_follows(run_dir: Path, reference_dir: Path, steps: range) -> None:
    """The loss within float tolerance of the reference's at these steps, each step's micro-batch slots holding
    the reference's clips (the masks and dropout of a slot are seeded by step and slot)."""
    ours, theirs = slot_keys(run_dir), slot_keys(reference_dir)
    assert {k: v for k, v in ours.items() if k[0] in steps} == {k: v for k, v in theirs.items() if k[0] in steps}
    ours, theirs = losses(run_dir), losses(reference_dir)
    assert sorted(ours) == list(range(1, 9))
    for s in steps:
        assert ours[s] == pytest.approx(theirs[s], rel=1e-5, abs=1e-6), s


@pytest.mark.slow
def test_zero2_two_processes_killed_resume_on_one_worker(shards, reference, tmp_path):
    """2 processes x 1 worker, one SIGKILLed mid-epoch; resumed on 1 process x 1 worker (2 slots -> 1): the rest
    of epoch 0 is re-dealt, step by step and slot by slot as the uninterrupted run feeds it."""
    procs = start_env_vars(args(shards, tmp_path, 2, "data.num_workers=1"), world=2)
    log = tmp_path / "log.jsonl"
    deadline = time.monotonic() + TIMEOUT
    while not (log.is_file() and log.read_text().count('"kind": "train"') >= 3):  # step 3 done, step 2 saved
        assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1][-3000:]
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    _, err = procs[0].communicate(timeout=TIMEOUT)
    assert procs[0].returncode == 2 and time.monotonic() - killed < 30 + 10  # within the collective timeout
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: rank\(s\) 1 of 2 stopped answering \(rank 0: .+\); the last completed step is \d+, "
                        r"the last good checkpoint .+step_0000000[24]: --resume continues from it, on any number of "
                        r"processes", line), line
    assert latest_checkpoint(tmp_path).name in line  # intact, and named

    saved = latest_checkpoint(tmp_path)
    before = digest(saved)
    resumed = in_process(shards, tmp_path, 2, "run.keep=10", "data.num_workers=1", resume=True)  # 1 process x 1 worker
    assert resumed.step == 8 and digest(saved) == before  # converted beside it, never modified
    assert (tmp_path / "checkpoints" / "universal").is_dir()  # through DeepSpeed's universal checkpoint
    text = (tmp_path / "log.jsonl").read_text()
    assert "continued with 1 process(es), ZeRO stage 2" in text
    assert re.search(r"the rest of epoch 0, \d+ batch\(es\) of the 2 process\(es\) x 1 worker\(s\) that planned it, "
                     r"re-dealt over 1 x 1 in the steps and micro-batch slots of the uninterrupted run\"", text)
    epoch = assert_epochs(tmp_path, shards, saved=(2, 1), now=(1, 1))
    assert_curve_follows(tmp_path, reference[2], range(1, epoch + 1))


@pytest.mark.slow
def test_zero2_one_process_resumed_on_two(shards, reference, tmp_path):
    in_process(shards, tmp_path, 2, "run.stop_at=2")
    launch_env_vars([*args(shards, tmp_path, 2, "data.num_workers=1"), "--resume"], world=2)
    text = (tmp_path / "log.jsonl").read_text()
    assert "was saved with 1 process(es), ZeRO stage 2, fp32; continued with 2 process(es), ZeRO stage 2" in text
    epoch = assert_epochs(tmp_path, shards, saved=(1, 2), now=(2, 1))
    assert_curve_follows(tmp_path, reference[2], range(1, epoch + 1))
    assert (tmp_path / "checkpoints" / "step_00000008" / "state_rank1.pt").is_file()  # saved on its new layout


@pytest.mark.slow
def test_zero3_one_process_resumed_on_two(shards, reference, tmp_path):
    """1 process x 1 worker stopped mid-epoch, resumed on 2 processes x 1 worker (1 slot -> 2): both ranks take
    their turns of the one old slot's plan."""
    one_process(shards, tmp_path, 3, "data.num_workers=1", "run.stop_at=2")
    launch_env_vars([*args(shards, tmp_path, 3, "data.num_workers=1"), "--resume"], world=2)
    text = (tmp_path / "log.jsonl").read_text()
    assert "was saved with 1 process(es), ZeRO stage 3, fp32; continued with 2 process(es), ZeRO stage 3" in text
    epoch = assert_epochs(tmp_path, shards, saved=(1, 1), now=(2, 1))
    # within float tolerance of the uninterrupted run past the first update after the load (Engine.load's
    # mends of DeepSpeed's universal ZeRO-3 load; without them step 4 was off by 12%)
    assert_curve_follows(tmp_path, reference[3], range(1, epoch + 1))


def test_refused_resumes_are_one_line_before_anything_loads(shards, tmp_path):
    in_process(shards, tmp_path, 2, "run.stop_at=2")
    written = (tmp_path / "ds_config.json").read_text()
    with pytest.raises(MaeastError, match=re.escape("was saved with 1 process(es), ZeRO stage 2, fp32, this run has "
                                                    "1 process(es), ZeRO stage 3, fp32")):
        in_process(shards, tmp_path, 3, resume=True)  # refused before any engine is built
    assert (tmp_path / "ds_config.json").read_text() == written  # nothing rewritten
    assert not (tmp_path / "checkpoints" / "universal").exists()


@pytest.mark.slow  # the reference runs take ~15 s
def test_fewer_workers_mid_epoch(shards, reference, tmp_path):
    """1 process x 2 workers stopped mid-epoch, resumed with 1 worker (the same engine layout, 2 slots -> 1):
    the rest of epoch 0 in the uninterrupted run's steps and slots, then the new layout's epoch 1."""
    in_process(shards, tmp_path, 2, "run.stop_at=3")
    in_process(shards, tmp_path, 2, "data.num_workers=1", resume=True)
    epoch = assert_epochs(tmp_path, shards, saved=(1, 2), now=(1, 1))
    assert_curve_follows(tmp_path, reference[2], range(1, epoch + 1))


@pytest.mark.slow
def test_a_stalled_process_stops_the_others_within_the_timeout(shards, tmp_path):
    procs = start_env_vars(args(shards, tmp_path, 2, "data.num_workers=1", "run.collective_timeout=10"), world=2)
    log = tmp_path / "log.jsonl"
    deadline = time.monotonic() + TIMEOUT
    while not (log.is_file() and log.read_text().count('"kind": "train"') >= 2):
        assert time.monotonic() < deadline and procs[0].poll() is None, procs[0].communicate()[1][-3000:]
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGSTOP)  # alive but silent: only the timeout can tell
    stalled = time.monotonic()
    try:
        _, err = procs[0].communicate(timeout=TIMEOUT)
        elapsed = time.monotonic() - stalled
    finally:
        procs[1].kill()
        procs[1].communicate()
    line = err.strip().splitlines()[-1]
    assert procs[0].returncode == 2 and elapsed < 10 + 5 + 10, (elapsed, err[-3000:])  # timeout + roll call + slack
    assert line.startswith("error: rank(s) 1 of 2 stopped answering (rank 0: ") and "--resume continues" in line, line


@pytest.mark.slow
def test_a_process_missing_at_start_is_one_line(shards, tmp_path):
    procs = start_env_vars(args(shards, tmp_path, 2, "data.num_workers=1", "run.collective_timeout=5"), world=2)
    procs[1].kill()  # before it reaches the rendezvous
    procs[1].communicate()
    started = time.monotonic()
    _, err = procs[0].communicate(timeout=TIMEOUT)
    assert procs[0].returncode == 2 and time.monotonic() - started < 60, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: a collective failed outside the training steps"), err[-3000:]


@pytest.mark.slow
def test_a_checkpoint_without_a_recorded_layout_resumes(shards, reference, tmp_path):
    """Checkpoints written before layouts were recorded: the layout is read from DeepSpeed's files and
    RUN/ds_config.json, and the same layout resumes as before."""
    in_process(shards, tmp_path, 2, "run.stop_at=2")
    for file in (tmp_path / "checkpoints" / "step_00000002").glob("state_rank*.pt"):
        state = torch.load(file, weights_only=True)
        del state["layout"]
        torch.save(state, file)
    assert saved_layout(tmp_path / "checkpoints" / "step_00000002", {"zero_optimization": {"stage": 2}}) == \
        Layout(1, 2, False)
    in_process(shards, tmp_path, 2, resume=True)
    assert_curve_follows(tmp_path, reference[2], range(1, 9))  # two loader workers: float tolerance


@pytest.mark.slow
def test_at_an_epoch_boundary_any_layout_continues(shards, tmp_path):
    """Saved by 2 processes x 1 worker at the end of epoch 0, resumed on 1 x 1 (another slot count): epoch 1
    is the one a run that always had 1 x 1 sees."""
    epoch = len(planned_steps(shards, 2, 1, epoch=0))
    launch_env_vars(args(shards, tmp_path, 2, "data.num_workers=1", f"run.stop_at={epoch}"), world=2)
    in_process(shards, tmp_path, 2, "data.num_workers=1", resume=True)
    ours = step_keys(tmp_path)
    assert [ours[s] for s in range(1, epoch + 1)] == planned_steps(shards, 2, 1, epoch=0)
    assert [ours[s] for s in range(epoch + 1, 9)] == planned_steps(shards, 1, 1, epoch=1)[:8 - epoch]
