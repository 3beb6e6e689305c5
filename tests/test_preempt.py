"""Signals are events, not crashes (maeast.train.preempt, the Run's session): SIGTERM or SIGUSR1 stops every
process after the same step with a checkpoint there and exit code 75, and `--run.resume auto` continues the
run as if it never stopped; run.resume's folder rules; a second signal or run.preempt_grace exits at once;
torchrun restarting a run on the node that survives another's loss."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from maeast.artifacts import latest_checkpoint
from maeast.errors import MaeastError
from maeast.finetune import finetune
from maeast.train.config import RunConfig
from maeast.train.logging import read_log
from maeast.train import preempt
from maeast.train.preempt import EXIT_RESTART, requested, stop_requests, votes
from maeast.train.run import continues, resume_mode
from tests.conftest import build, make_corpus, make_demo_shards, step_keys
from tests.test_engine_distributed import ROOT, TIMEOUT, clean_env, launch_env_vars, start_env_vars
from tests.test_engine_elastic import args, assert_curve_follows, assert_epochs, in_process, losses
from tests.test_finetune_run import RUN as FINETUNE_RUN
from tests.test_finetune_run import config as finetune_config
from tests.test_finetune_run import train_losses

PREEMPTED = (r"preempted \(SIGTERM\) at step (\d+): checkpoint (\S+) saved; run again with --run.resume auto to "
             r"continue")
ONLY_AT_THE_END = ("run.save_every_steps=100",)  # the only scheduled save is the last step's


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_demo_shards(tmp_path_factory.getbasetemp() / "engine_demo")


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> Path:
    """An uninterrupted 8-step run: 1 process x 2 loader workers, ZeRO-2."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    in_process(shards, run_dir, 2, *ONLY_AT_THE_END)
    return run_dir


def wait_for_steps(log: Path, steps: int, procs: list[subprocess.Popen]) -> None:
    """Until log.jsonl holds `steps` training records (every process still running)."""
    deadline = time.monotonic() + TIMEOUT
    while not (log.is_file() and log.read_text().count('"kind": "train"') >= steps):
        for p in procs:
            assert time.monotonic() < deadline and p.poll() is None, p.communicate()[1][-3000:]
        time.sleep(0.05)


def stop_signal(proc: subprocess.Popen) -> None:
    """SIGTERM to a process held still (SIGSTOP, SIGTERM, SIGCONT): it cannot run on to its last step between the
    test's look at its log and the signal, however busy the machine."""
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGCONT)


def preempted(proc: subprocess.Popen, run_dir: Path) -> int:
    """A process that a stop signal ended: exit code 75 and the one line, whose checkpoint is the latest and
    holds its step; returns the step."""
    _, err = proc.communicate(timeout=TIMEOUT)
    line = err.strip().splitlines()[-1]
    assert proc.returncode == EXIT_RESTART, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    match = re.fullmatch(PREEMPTED, line)
    assert match, line
    step, saved = int(match[1]), Path(match[2])
    assert saved == run_dir / "checkpoints" / f"step_{step:08d}" == latest_checkpoint(run_dir)
    return step


# ---- pretraining ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigterm_saves_where_it_is_and_auto_resume_is_the_uninterrupted_run(shards, reference, tmp_path):
    procs = start_env_vars(args(shards, tmp_path, 2, "data.num_workers=2", *ONLY_AT_THE_END), world=1)
    wait_for_steps(tmp_path / "log.jsonl", 2, procs)
    stop_signal(procs[0])
    step = preempted(procs[0], tmp_path)
    assert 2 <= step < 8  # a checkpoint where it stopped, not at run.save_every_steps
    assert sorted(losses(tmp_path)) == list(range(1, step + 1))
    assert any(r.get("message", "").startswith(f"preempted (SIGTERM) at step {step}") for r in read_log(tmp_path))

    again = launch_env_vars([*args(shards, tmp_path, 2, "data.num_workers=2", *ONLY_AT_THE_END), "--run.resume",
                             "auto"], world=1)
    assert f"resumed at step {step}" in again[0].stdout + again[0].stderr
    assert losses(tmp_path) == losses(reference)  # bitwise: the same layout
    assert step_keys(tmp_path) == step_keys(reference)
    assert (tmp_path / "encoder" / "encoder.safetensors").is_file()


@pytest.mark.slow
def test_two_processes_one_signalled_both_stop_at_the_same_step(shards, reference, tmp_path):
    procs = start_env_vars(args(shards, tmp_path, 2, "data.num_workers=1", *ONLY_AT_THE_END), world=2)
    try:
        wait_for_steps(tmp_path / "log.jsonl", 2, procs)
        stop_signal(procs[1])  # one rank only: the step's all-reduce tells the other
        steps = [preempted(p, tmp_path) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert steps[0] == steps[1] and 2 <= steps[0] < 8
    saved = latest_checkpoint(tmp_path)
    assert sorted(p.name for p in saved.glob("state_rank*.pt")) == ["state_rank0.pt", "state_rank1.pt"]

    launch_env_vars([*args(shards, tmp_path, 2, "data.num_workers=1", *ONLY_AT_THE_END), "--run.resume", "auto"])
    epoch = assert_epochs(tmp_path, shards, saved=(2, 1), now=(2, 1))  # each clip of epoch 0 once, none lost
    assert_curve_follows(tmp_path, reference, range(1, epoch + 1))  # 1 x 2 and 2 x 1 share epoch 0's batches


# ---- fine-tuning ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ft_preempt")
    build(make_corpus(root / "corpus", speech=8, music=8), root / "shards")
    return root / "shards"


@pytest.mark.slow
def test_finetune_sigterm_inside_a_fold_then_auto_resume(corpus, tmp_path):
    reference = finetune(finetune_config(corpus, tmp_path / "reference"))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "maeast", "finetune", "--task", "custom", "--data", str(corpus), "--config",
           "finetune_tiny", "--run.dir", str(run_dir), *FINETUNE_RUN]
    proc = subprocess.Popen(cmd, env=clean_env(), cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_steps(run_dir / "main" / "log.jsonl", 1, [proc])
        stop_signal(proc)
        step = preempted(proc, run_dir / "main")
    finally:
        proc.kill()
        proc.communicate()
    last = max(step_keys(reference.run_dir / "main"))
    assert 1 <= step < last and not (run_dir / "main" / "result.json").exists()

    resumed = finetune(finetune_config(corpus, run_dir, "--run.resume", "auto"))
    part = run_dir / "main"
    assert step_keys(part) == step_keys(reference.run_dir / "main")  # the same clips in the same steps
    assert train_losses(part) == train_losses(reference.run_dir / "main")  # bitwise
    assert resumed.folds[0]["test"] == reference.folds[0]["test"]
    assert resumed.folds[0]["history"] == reference.folds[0]["history"]
    with pytest.raises(MaeastError, match=r"different config.*optim\.lr"):  # another run: refused, in one line
        finetune(finetune_config(corpus, run_dir, "--run.resume", "auto", "--optim.lr", "0.5"))


# ---- run.resume -------------------------------------------------------------------------------------

def test_resume_modes(tmp_path):
    assert [resume_mode(RunConfig(resume=m), flag) for m in ("no", "must", "auto") for flag in (False, True)] == [
        "no", "must", "must", "must", "auto", "auto"]  # --resume is must; run.resume auto wins over it
    assert RunConfig(resume=False).resume == "no"  # YAML's reading of a bare `no`
    with pytest.raises(MaeastError, match="run.resume 'sometimes' unknown"):
        RunConfig(resume="sometimes")
    held = "checkpoint step_00000002"
    assert continues("auto", tmp_path, held) and not continues("auto", tmp_path, None)
    assert continues("must", tmp_path, held) and not continues("no", tmp_path, None)
    with pytest.raises(MaeastError, match="already holds a run .*--run.resume auto"):
        continues("no", tmp_path, held)
    with pytest.raises(MaeastError, match="nothing to resume"):
        continues("must", tmp_path, None)


def test_auto_starts_an_empty_folder_and_refuses_another_run_in_one_line(shards, tmp_path):
    from typer.testing import CliRunner

    from maeast.cli.common import new_app
    from maeast.cli.train import register
    app = new_app("test")
    register(app)
    cli = ["pretrain", "--config", "pretrain_tiny", *args(shards, tmp_path, 2)[4:], "--deepspeed_config",
           str(ROOT / "launch" / "ds_zero2.json"), "--run.stop_at", "2"]
    first = CliRunner().invoke(app, [*cli, "--run.resume", "auto", "--resume"])  # auto wins over --resume
    assert first.exit_code == 0, first.output
    assert any(r.get("message", "").startswith("started step 0") for r in read_log(tmp_path))
    other = CliRunner().invoke(app, [*cli, "--run.resume", "auto", "--optim.lr", "0.5"])
    assert other.exit_code == 2 and len(other.output.strip().splitlines()) == 1, other.output
    assert "holds a run with a different config" in other.output and "optim.lr" in other.output


# ---- the signals themselves -------------------------------------------------------------------------

def test_handlers_record_requests_and_are_restored(monkeypatch):
    monkeypatch.setattr(preempt, "SAME_REQUEST_S", 1e9)  # this process must not exit at once
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    with stop_requests(600.0):
        assert votes() == {"SIGTERM": 0.0, "SIGUSR1": 0.0}
        signal.raise_signal(signal.SIGUSR1)
        assert votes() == {"SIGTERM": 0.0, "SIGUSR1": 1.0}
        with stop_requests(600.0):  # nested: the outer scope's request stands
            assert votes()["SIGUSR1"] == 1.0
            signal.raise_signal(signal.SIGTERM)  # at once: the same request delivered twice (Slurm and torchrun)
        assert votes() == {"SIGTERM": 1.0, "SIGUSR1": 1.0} and requested() == ["SIGUSR1", "SIGTERM"]
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == before
    assert votes() == {"SIGTERM": 0.0, "SIGUSR1": 0.0}


WAITS = textwrap.dedent("""
    import sys, time
    from maeast.train import preempt
    from maeast.train.preempt import requested, stop_requests
    preempt.SAME_REQUEST_S = 0.0  # a second signal is one however soon it comes
    with stop_requests(float(sys.argv[1]), lambda: "at step 3 of RUN"):
        print("ready", flush=True)
        while not requested():
            time.sleep(0.01)
        print("asked", flush=True)
        time.sleep(600)  # a save that does not finish
""")


@pytest.mark.parametrize("grace", [1, 600], ids=["grace_runs_out", "second_signal"])
def test_a_second_signal_or_the_grace_exits_at_once(grace):
    proc = subprocess.Popen([sys.executable, "-c", WAITS, str(grace)], env=clean_env(), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGUSR1)
        assert proc.stdout.readline() == "asked\n"
        if grace == 600:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
        proc.communicate()
    reason = "run.preempt_grace (1 s) ran out" if grace == 1 else "a second signal (SIGTERM) came"
    assert proc.returncode == EXIT_RESTART
    assert err.strip() == (f"preempted ({'SIGUSR1' if grace == 1 else 'SIGUSR1, SIGTERM'}) at step 3 of RUN: "
                           f"{reason} before the checkpoint was saved; stopped at once (checkpoints are atomic: "
                           f"nothing half-written is ever loaded); run again with --run.resume auto to continue")


# ---- torchrun: a node lost, the run restarted on the one left ---------------------------------------

def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (torchrun starts its workers in sessions of their own, so a process
    group does not hold them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (listed first, so that none is missed)."""
    for p in process_tree(pid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_torchrun_restarts_on_the_node_left(shards, reference, tmp_path):
    """Two torchrun agents on 127.0.0.1 as two nodes (--nnodes 1:2); after the first checkpoint one agent and its
    worker are killed: the other's worker fails its collective within run.collective_timeout and exits, its agent
    rendezvous again alone and the restarted worker resumes (run.resume auto) on 1 process by itself."""
    from maeast.train.distributed import free_port
    run_dir = tmp_path / "run"
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nnodes", "1:2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id", "preempt",
                "--max-restarts", "3", "--local-addr", "127.0.0.1"]
    script = [str(ROOT / "launch" / "pretrain.py"), *args(shards, run_dir, 2, "data.num_workers=1"),
              "--run.resume", "auto", "--run.collective_timeout", "20", "--run.trace_keys", "true"]
    outs = [tmp_path / f"agent{i}.txt" for i in range(2)]
    agents = []
    try:
        for i, out in enumerate(outs):  # the first agent hosts the rendezvous store; the second's node is lost
            agents.append(subprocess.Popen([*torchrun, "--rdzv-conf", f"is_host={i == 0}", *script], env=clean_env(),
                                           cwd=ROOT, stdout=out.open("w"), stderr=subprocess.STDOUT,
                                           start_new_session=True))
        wait_for_steps(run_dir / "log.jsonl", 3, agents)  # step 2 saved, step 3 done
        kill_tree(agents[1].pid)
        agents[1].wait(timeout=TIMEOUT)
        assert agents[0].wait(timeout=2 * TIMEOUT) == 0, outs[0].read_text()[-5000:]
    finally:
        for agent in agents:
            kill_tree(agent.pid)
    text = outs[0].read_text()
    assert re.search(r"error: rank\(s\) [01] of 2 stopped answering", text), text[-5000:]
    assert re.search(r"resumed at step \d+ of 8: 1 process\(es\)", text), text[-5000:]
    assert "continued with 1 process(es), ZeRO stage 2, fp32 through DeepSpeed's universal checkpoint" in text
    epoch = assert_epochs(run_dir, shards, saved=(2, 1), now=(1, 1))  # every clip of epoch 0 exactly once
    assert_curve_follows(run_dir, reference, range(1, epoch + 1))  # float tolerance of the uninterrupted run
    assert (run_dir / "encoder" / "encoder.safetensors").is_file()
