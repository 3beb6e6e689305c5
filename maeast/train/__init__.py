"""The training layer both recipes share (maeast.pretrain, maeast.finetune), importing neither.

Read top to bottom: config (OptimConfig, ScheduleConfig, RunConfig: the sections every recipe embeds) ->
ds_config (the DeepSpeed config) -> optim (AdamW, schedules) -> distributed (process group helpers) ->
engine (the only module importing deepspeed) -> checkpoint (atomic saves) -> layout (how a checkpoint
resumes on another process layout) -> logging (rank 0's log) -> rng (named random streams) -> mfu (the
device's peak) -> preempt (SIGTERM and SIGUSR1 as stop requests, exit code 75) -> trainer (the one
optimizer step) -> run (the Run: folder, resume guard, cadence, stop, key trace, collective timeout, the
one line of a dead process, the one line of a preempted one).
"""
