"""Process-group plumbing: environment defaults, rank helpers and the few collectives the loop needs.

Launchers set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (the deepspeed launcher and
torchrun do; the deepspeed launcher also passes --local_rank to the script). A plain `python` or
`maeast pretrain` start is one process: `env_defaults` fills in rank 0 of 1 on 127.0.0.1 and a free
port. Everything here is torch.distributed; deepspeed is imported only by maeast.train.engine.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from maeast.errors import MaeastError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_defaults() -> dict[str, str]:
    """Fill in a one-process group's environment where a launcher did not; returns what was set."""
    if "WORLD_SIZE" in os.environ and "RANK" not in os.environ:
        raise MaeastError("WORLD_SIZE is set but RANK is not; start with the deepspeed launcher or torchrun, "
                          "or unset WORLD_SIZE for one process")
    if "MASTER_PORT" not in os.environ and os.environ.get("WORLD_SIZE", "1") != "1":
        raise MaeastError("MASTER_PORT is not set for a multi-process run; start it with the deepspeed launcher "
                          "(or torchrun), which sets it")
    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    set_ = {k: v for k, v in defaults.items() if k not in os.environ}
    if "MASTER_PORT" not in os.environ:
        set_["MASTER_PORT"] = str(free_port())
    os.environ.update(set_)
    return set_


def take_local_rank(argv: list[str]) -> list[str]:
    """Remove the deepspeed launcher's `--local_rank N` / `--local_rank=N` from argv into LOCAL_RANK."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--local_rank=") or arg.startswith("--local-rank="):
            os.environ["LOCAL_RANK"] = arg.split("=", 1)[1]
        elif arg in ("--local_rank", "--local-rank") and i + 1 < len(argv):
            os.environ["LOCAL_RANK"] = argv[i + 1]
            i += 1
        else:
            out.append(arg)
        i += 1
    return out


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def local_world_size() -> int:
    """Processes on this node: LOCAL_WORLD_SIZE (torchrun), LOCAL_SIZE (deepspeed), else the whole world."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world_size())))


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """This process's device: cuda:LOCAL_RANK when CUDA is there, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def set_threads(threads: int | None, loader_threads: int = 0) -> int:
    """torch intra-op threads: `threads`, or this process's share of the node's cores minus what its loader
    workers use. Oversubscribed cores are far worse than idle ones: OpenMP threads that wait on a
    descheduled peer made a 2-core step 40x slower when a loader worker or another job took a core."""
    share = (os.cpu_count() or 1) // local_world_size()
    n = threads or max(1, share - loader_threads)
    torch.set_num_threads(n)
    return n


def default_group_timeout(seconds: float) -> None:
    """The timeout of process groups created later without one: DeepSpeed makes its ZeRO groups with
    torch.distributed.new_group(ranks), which takes torch's module default (30 minutes), not the world
    group's. A process that stalls (alive, silent) inside a ZeRO collective then held the others for
    that long (measured: a SIGSTOPped process, run.collective_timeout 10, the other still waiting after
    300 s); torch has no setting for it, so its module default is set here."""
    from torch.distributed import distributed_c10d
    distributed_c10d.default_pg_timeout = distributed_c10d.default_pg_nccl_timeout = timedelta(seconds=seconds)


def barrier() -> None:
    if initialized() and world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 CPU/device tensor over all processes (a copy; the input is untouched)."""
    out = values.clone()
    if initialized() and world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


# ---- when a process dies ---------------------------------------------------------------------------

ROLL_CALL = ".roll-call"
"""RUN/.roll-call/rank{r}: written by the processes still alive after a collective failed."""


def is_peer_failure(error: BaseException) -> bool:
    """Whether an exception is a collective that failed because another process died or stalled past the
    process group's timeout (gloo raises RuntimeError: connection closed or reset, timed out; NCCL its own)."""
    if isinstance(error, dist.DistError):  # also the rendezvous: "Timed out ... waiting for clients"
        return True
    if not isinstance(error, RuntimeError) or not initialized() or world_size() == 1:
        return False
    return any(word in str(error) for word in ("gloo", "NCCL", "Connection closed", "Connection reset", "Timed out",
                                                "timed out"))


def missing_ranks(run_dir, grace_s: float = 5.0) -> list[int]:
    """After a failed collective, without collectives: each surviving process writes RUN/.roll-call/rank{r}
    and waits `grace_s` for the others; the ranks that wrote nothing are dead or stalled. The run folder
    is shared by every process (checkpoints need it), so this works across nodes."""
    folder = Path(run_dir) / ROLL_CALL
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{rank()}").write_text(str(os.getpid()))
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        present = {p.name for p in folder.iterdir()}
        if all(f"rank{r}" in present for r in range(world_size())):
            break
        time.sleep(0.2)
    present = {p.name for p in folder.iterdir()}
    return [r for r in range(world_size()) if f"rank{r}" not in present]


def clear_roll_call(run_dir) -> None:
    """Rank 0 at the start of a session: forget the last failure's roll call."""
    if is_main():
        shutil.rmtree(Path(run_dir) / ROLL_CALL, ignore_errors=True)
