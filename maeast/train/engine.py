"""The DeepSpeed engine: the one module of maeast that imports deepspeed.

Distribution is applied to a plain MAEAST module here (torchtitan's parallelize step): the model
never knows it runs under ZeRO. What the loop and the checkpoints use is the small `Engine` API:
forward / backward / step, the learning rate, save / load, and the full fp32 weights for export.

Two choices keep DeepSpeed from compiling C++ ops at first use (40-80 s each on CPU): the optimizer is
a torch AdamW handed in as an object (no fused Adam), and the shared-memory all-reduce op is marked
incompatible before the process group starts (it only serves inference all-reduce; training
collectives go through gloo on CPU and NCCL on CUDA). With optimizer offload (a JSON knob) DeepSpeed
needs its own CPU Adam, which it compiles once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import warnings
from datetime import timedelta
from pathlib import Path

import torch
import torch.nn as nn

from maeast.train import distributed as dist
from maeast.train.config import OptimConfig, ScheduleConfig
from maeast.train.ds_config import offloads_optimizer, zero_stage
from maeast.train.optim import build_optimizer, build_schedule
from maeast.errors import MaeastError
from maeast.precision import autocast

os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import deepspeed  # noqa: E402
    import deepspeed.ops  # noqa: E402
    from deepspeed.utils import safe_get_full_fp32_param  # noqa: E402


def quiet_deepspeed(level: int = logging.WARNING) -> None:
    """DeepSpeed logs every init detail at INFO on every rank, and its ZeRO collectives trip torch's
    deprecation warnings at every step: keep DeepSpeed's warnings and errors, drop those."""
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    logging.getLogger("DeepSpeed").setLevel(level)
    from deepspeed.utils import logger
    logger.setLevel(level)


def init_distributed(timeout_s: float | None = None) -> None:
    """Start the process group (gloo on CPU, NCCL on CUDA) from the launcher's environment or defaults;
    its collectives give up after timeout_s seconds (None: the backend's default, 30 minutes)."""
    chose_port = "MASTER_PORT" in dist.env_defaults()
    quiet_deepspeed()
    # No shared-memory op build (gloo does the work). Writing the entry without reading the attribute also
    # skips DeepSpeed's probe of every op, which runs the compiler (and prints its failures, e.g. -laio).
    vars(deepspeed.ops).setdefault("__compatible_ops__", {})["deepspeed_shm_comm"] = False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
    for attempt in range(3):
        try:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, **timeout)
            break
        except torch.distributed.DistNetworkError as e:
            # A one-process run picked a free port itself (env_defaults), and another program took it before
            # the store listened on it: pick another. A launcher's port is the launcher's to fix.
            if not chose_port or "EADDRINUSE" not in str(e) or attempt == 2:
                raise
            os.environ["MASTER_PORT"] = str(dist.free_port())
    if timeout_s is not None:
        dist.default_group_timeout(timeout_s)


def to_universal(checkpoint: Path, out: Path) -> None:
    """DeepSpeed's Universal Checkpointing conversion (deepspeed.checkpoint.ds_to_universal) of a ZeRO
    checkpoint folder into `out`, which an Engine built with "checkpoint": {"load_universal": true} loads
    on any number of processes. Reads `checkpoint` only; also writes out's parent/latest_universal.
    In this process (no worker pool); DeepSpeed's progress output is kept for the error line only."""
    from deepspeed.checkpoint import ds_to_universal
    args = argparse.Namespace(input_folder=str(checkpoint), output_folder=str(out), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), _quiet():
        try:
            ds_to_universal.main(args)
        except Exception as e:  # noqa: BLE001 -- DeepSpeed raises asserts, ValueErrors, KeyErrors from inside
            raise MaeastError(f"DeepSpeed could not convert {checkpoint} to a universal checkpoint "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); resume with "
                              f"the process count and ZeRO JSON that saved it") from None


class Engine:
    """A plain module (a model that returns its loss, or a classifier) under a DeepSpeed engine, with the
    optimizer and schedule of `optim` and `schedule` and the generated DeepSpeed config. Precision is
    decided here and only here: the DeepSpeed config's bf16 (on CUDA) runs every forward under autocast."""

    def __init__(self, model: nn.Module, optim: OptimConfig, schedule: ScheduleConfig, ds_config: dict):
        self.stage = zero_stage(ds_config)
        optimizer = build_optimizer(model, optim)
        if offloads_optimizer(ds_config):
            from deepspeed.ops.adam import DeepSpeedCPUAdam  # offload needs DeepSpeed's CPU Adam (compiled once)
            optimizer = DeepSpeedCPUAdam(optimizer.param_groups, lr=optim.lr, betas=tuple(optim.betas),
                                         eps=optim.eps, weight_decay=optim.weight_decay, adamw_mode=True)
        with _quiet():
            self.ds, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, optimizer=optimizer, config=ds_config,
                lr_scheduler=lambda opt: build_schedule(opt, optim.lr, schedule))
        self.bf16 = bool(ds_config.get("bf16", {}).get("enabled", False))
        self.universal = bool(ds_config.get("checkpoint", {}).get("load_universal", False))

    @property
    def module(self) -> nn.Module:
        return self.ds.module

    @property
    def device(self) -> torch.device:
        return self.ds.device

    @property
    def global_steps(self) -> int:
        return int(self.ds.global_steps)

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    def forward(self, *inputs):
        """The module's output for one micro-batch. With bf16 weights (DeepSpeed bf16, CUDA only) the whole
        forward runs under bf16 autocast, so the fp32 parts (input norm, losses) meet bf16 weights cleanly."""
        with autocast(self.device, self.bf16):
            return self.ds(*inputs)

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss)

    def step(self) -> None:
        """One micro-step: DeepSpeed updates (clip, AdamW, schedule) at the accumulation boundary."""
        self.ds.step()

    def lr(self) -> float:
        """The peak-relative learning rate of the next update (the first group's lr over its lr_scale)."""
        group = self.optimizer.param_groups[0]
        return float(group["lr"] / group.get("lr_scale", 1.0))

    def grad_norm(self) -> float | None:
        norm = self.ds.get_global_grad_norm()
        return None if norm is None else float(norm)

    def save(self, directory: Path, tag: str, client_state: dict) -> None:
        """DeepSpeed's checkpoint (weights, optimizer, schedule, step) into directory/tag; every rank calls it."""
        with _quiet():
            self.ds.save_checkpoint(str(directory), tag=tag, client_state=client_state, save_latest=False)

    def load(self, directory: Path, tag: str) -> dict:
        """Restore weights, optimizer, schedule and step; returns the client state saved with them."""
        built = [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
                 for g in self.optimizer.param_groups]
        with _quiet():
            path, client = self.ds.load_checkpoint(str(directory), tag=tag, load_optimizer_states=True,
                                                   load_lr_scheduler_states=True)
        if path is None:
            raise MaeastError(f"checkpoint {Path(directory) / tag} could not be loaded (incomplete or from "
                              f"another ZeRO stage / process count)")
        if self.universal:
            self._mend_universal(built)
        return client or {}

    def _mend_universal(self, built: list[dict]) -> None:
        """Two things DeepSpeed 0.19.8's universal load gets wrong under ZeRO-3 (measured on CPU: the loss left
        the uninterrupted curve at the first update): every sub-group's Adam state gets the same `step`
        tensor, which each sub-group's update then advances (so all but the first use a wrong bias
        correction), and every parameter group gets the first group's weight decay. Each state gets its
        own step, and the groups their settings as built from our config (the lr stays the schedule's)."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        for state in inner.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()
        for group, settings in zip(self.optimizer.param_groups, built):
            group.update(settings)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter as full fp32 on the CPU (the optimizer's master copy under ZeRO or bf16),
        and every buffer. A collective under ZeRO: every rank calls it, in the same order."""
        out = {}
        for name, p in self.module.named_parameters():
            full = safe_get_full_fp32_param(p)
            out[name] = (full if full is not None else p.detach()).float().cpu().clone()
        for name, b in self.module.named_buffers():
            out[name] = (b.detach().float() if b.is_floating_point() else b.detach()).cpu().clone()
        return out


@contextlib.contextmanager
def _quiet():
    """DeepSpeed's own warnings (untested optimizers, deprecated torch APIs it uses) are not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit, met by DeepSpeed's imports
        warnings.filterwarnings("ignore", category=UserWarning, module="deepspeed")
        warnings.filterwarnings("ignore", category=UserWarning, module="torch.distributed")
        yield
