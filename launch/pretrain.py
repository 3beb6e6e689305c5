"""DeepSpeed entry point for MAE-AST pretraining, on one or many processes and nodes.

    deepspeed launch/pretrain.py --deepspeed_config launch/ds_zero2.json --config pretrain_patch_chunk \
        [--resume] [--optim.lr 2e-4 --run.dir runs/mine ...]
    deepspeed --num_gpus 8 launch/pretrain.py ...            # one node, 8 GPUs
    deepspeed --hostfile launch/hostfile launch/pretrain.py ...   # many nodes (launch/hostfile.example)
    deepspeed --num_gpus 2 launch/pretrain.py ...            # on a CPU machine: 2 processes over gloo

--config is a shipped name (maeast/configs) or a YAML file; everything after it that starts with
--section.key (or section.key=value) overrides the config. The JSON gives only ZeRO, precision and
offload settings: batch, optimizer and schedule come from the config. `maeast pretrain` runs the
same function as one process.

--resume continues the run on any number of processes (README "When nodes fail"): ZeRO-1/-2 and
ZeRO-3 through DeepSpeed's universal checkpoint, stage 0 as is; mid-epoch too, on any processes x
data.num_workers (maeast/loaders/elastic.py re-deals the rest of the epoch). If a process dies or
stalls, the others stop within run.collective_timeout seconds with one line naming it, the last step
and the last good checkpoint.

SIGTERM or SIGUSR1 (preemption, a time limit) stops every process after the same step with a checkpoint
there; each prints `preempted (SIGTERM) at step N: checkpoint RUN/checkpoints/step_N saved; run again with
--run.resume auto to continue` and exits 75 ("restart me"). With --run.resume auto the same command line
continues the run when its folder holds one and starts it when not, so a launcher can simply rerun it:

    torchrun --nnodes 1:4 --nproc-per-node 8 --max-restarts 10 --rdzv-backend c10d \
        --rdzv-endpoint HOST:29400 --rdzv-id myrun launch/pretrain.py --deepspeed_config launch/ds_zero2.json \
        --config pretrain_patch_chunk --run.dir /shared/runs/patch_chunk --run.resume auto
"""

from __future__ import annotations

import sys

from maeast.train.distributed import take_local_rank
from maeast.train.preempt import Preempted
from maeast.errors import MaeastError

USAGE = ("usage: deepspeed launch/pretrain.py --deepspeed_config JSON --config NAME_OR_YAML [--resume] "
         "[--run.resume auto] [--section.key VALUE ...]")


def parse(argv: list[str]) -> tuple[str | None, str | None, bool, list[str]]:
    """argv -> (deepspeed config path, config, resume, overrides)."""
    ds_config, config, resume, rest, i = None, None, False, [], 0
    while i < len(argv):
        arg = argv[i]
        key, eq, value = arg.partition("=")
        if key in ("--deepspeed_config", "--deepspeed-config", "--config"):
            if not eq:
                if i + 1 >= len(argv):
                    raise MaeastError(f"{key} needs a value; {USAGE}")
                value, i = argv[i + 1], i + 1
            if key == "--config":
                config = value
            else:
                ds_config = value
        elif arg == "--resume":
            resume = True
        elif arg == "--deepspeed":  # DeepSpeed's own flag that only says "a JSON follows"
            pass
        elif arg in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        else:
            rest.append(arg)
        i += 1
    return ds_config, config, resume, rest


def main(argv: list[str]) -> int:
    from maeast.pretrain import load_config, pretrain
    try:
        ds_config, config, resume, overrides = parse(take_local_rank(argv))
        if config is None:
            raise MaeastError(f"--config is required; {USAGE}")
        pretrain(load_config(config, overrides), deepspeed_config_path=ds_config, resume=resume)
    except Preempted as e:  # a stop signal: saved; the launcher restarts (torchrun) or requeues (Slurm) the run
        print(e, file=sys.stderr)
        return e.exit_code
    except MaeastError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a collective failed before or after the training loop (which names the step)
        from maeast.train.distributed import is_peer_failure
        if not is_peer_failure(e):
            raise
        print(f"error: a collective failed outside the training steps ({type(e).__name__}): another process "
              f"died or stalled past run.collective_timeout; see its output, then rerun (with --resume if the run "
              f"has a checkpoint)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
