# shellcheck shell=bash
# Sourced by launch/slurm/pretrain.sbatch and finetune.sbatch (README "Slurm"): one srun task per node
# starts torchrun, which starts GPUS_PER_NODE processes; Slurm's warning signal becomes a checkpoint and a
# requeue. The sourcing script sets GPUS_PER_NODE, PORT, PYTHON, SAVE_SECONDS and MAX_REQUEUES, then calls
# `train ARGS...` (ARGS: what torchrun runs, e.g. launch/pretrain.py --config ...).
#
# What happens on a signal:
# - USR1 reaches this batch shell alone (`#SBATCH --signal=B:USR1@120`: 120 s before the time limit, or a
#   preemption with SlurmctldParameters=preempt_send_user_signal; by hand: scancel --batch --signal=USR1 JOB).
#   The trap forwards it once to srun, which forwards it to each node's torchrun, which (--signals-to-handle)
#   forwards it to its processes: each saves a checkpoint at the current step and exits (code 75), torchrun
#   waits SAVE_SECONDS for them, then exits. The shell then requeues the job (scontrol requeue): it starts
#   again from the top and --run.resume auto continues from that checkpoint. torchrun reports the processes'
#   exit as a failure (its own exit code is 1, not 75), so the shell decides from the signal it forwarded.
# - TERM (the time limit itself, scancel, a preemption that cancels or requeues) reaches every process of the
#   job: torchrun forwards it, the processes save and stop; the shell only waits for them (within KillWait)
#   and requeues nothing: a cancelled job stays cancelled, a preempted one is requeued by Slurm.
# - A training that ends by itself (finished: exit 0; failed: not 0) ends the job with its exit code.

signalled=""
srun_pid=""

on_signal() {  # $1: USR1 or TERM
    [ -n "$signalled" ] && return 0  # forwarded once: a second signal would cut torchrun's wait short
    signalled="$1"
    echo "maeast-slurm: $1 at $(date '+%F %T') (job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0})"
    if [ "$1" = USR1 ] && [ -n "$srun_pid" ]; then
        kill -USR1 "$srun_pid" 2>/dev/null || true  # srun forwards it to the tasks: each node's torchrun
    fi
}

train() {
    local head rc
    head="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"  # its torchrun hosts the rendezvous
    trap 'on_signal USR1' USR1
    trap 'on_signal TERM' TERM
    # --kill-on-bad-exit=0: one node's torchrun ending first (after its processes saved) must not kill the
    # others mid-save; a process that dies stops the rest within run.collective_timeout (README "When nodes fail").
    srun --ntasks-per-node=1 --kill-on-bad-exit=0 \
        "$PYTHON" -m torch.distributed.run --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" \
        --rdzv-backend c10d --rdzv-endpoint "$head:$PORT" --rdzv-id "maeast-$SLURM_JOB_ID" \
        --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout "$SAVE_SECONDS" \
        "$@" &
    srun_pid=$!
    if [ "$signalled" = USR1 ]; then  # it came before srun had started
        kill -USR1 "$srun_pid" 2>/dev/null || true
    fi
    while :; do  # a trapped signal interrupts `wait`: wait again until srun has ended
        wait "$srun_pid"
        rc=$?
        kill -0 "$srun_pid" 2>/dev/null || break
    done
    trap - USR1 TERM
    if [ "$rc" -ne 0 ] && [ "$signalled" = USR1 ]; then
        if [ "${SLURM_RESTART_COUNT:-0}" -ge "$MAX_REQUEUES" ]; then
            echo "maeast-slurm: stopped on USR1 after $MAX_REQUEUES requeues (MAX_REQUEUES): not requeueing again" >&2
            return "$rc"
        fi
        echo "maeast-slurm: the processes stopped on USR1 (exit $rc); requeueing job $SLURM_JOB_ID: it continues" \
             "from the checkpoint they saved"
        if scontrol requeue "$SLURM_JOB_ID"; then
            sleep 60 &  # Slurm ends this shell as it requeues the job
            wait $!
        fi
    fi
    return "$rc"
}
