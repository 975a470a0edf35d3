#!/usr/bin/env bash
# MemBART pretraining on a Slurm allocation: one torchrun per node, DeepSpeed ZeRO inside, preemption-safe.
#
#   sbatch [SBATCH OPTIONS] slurm/pretrain.sh CONFIG [section.key=value ...]
#
#   sbatch -N 4 -J base-run1 slurm/pretrain.sh pretrain/configs/base.yaml data.path=/data/shards
#   sbatch -N 2 -p a100 --gpus-per-node=4 -t 12:00:00 slurm/pretrain.sh pretrain/configs/large.yaml
#   DS_ACCELERATOR=cpu NPROC_PER_NODE=2 sbatch -N 2 --gpus-per-node=0 -p cpu slurm/pretrain.sh pretrain/configs/tiny.yaml
#
# Submit from the repository root: the job runs in the submission directory (Slurm's default), where CONFIG, the
# config's relative paths (ds_configs/..., data.path) and RUN_DIR are resolved, exactly as for
# `python pretrain/train.py`. The #SBATCH defaults below — job name membart-pretrain, 1 node, 8 GPUs per node,
# whole nodes (--exclusive), partition gpu, 24 h, output slurm-%x-%j.out, SIGUSR1 10 min before the end,
# requeueable — are each overridden by the same option on the sbatch line (-N, --gpus-per-node, -p, -t, -o,
# --signal; --oversubscribe --cpus-per-task=C to share nodes). The submitting environment passes through to every
# node (--export=ALL): activate the venv (or set PYTHON) and export NCCL_*, WANDB_*, HF_* variables before sbatch.
#
# How it runs
#   * `srun` starts ONE task per node; each runs `python -m torch.distributed.run` (torchrun) with
#     --nnodes=$SLURM_JOB_NUM_NODES, --nproc-per-node=NPROC_PER_NODE and a c10d rendezvous hosted on the first node
#     of the allocation (MASTER_ADDR: its address as Slurm knows it, NodeAddr; MASTER_PORT: 29500 + job id % 10000).
#     torchrun starts the ranks and sets RANK / LOCAL_RANK / WORLD_SIZE; world size = nodes x NPROC_PER_NODE.
#     A rank that fails ends that node's torchrun; srun then ends the other nodes NODE_EXIT_GRACE seconds later
#     (srun --wait; no hang until a collective times out), a grace that lets every node finish a normal or
#     preempted exit on its own (rank 0 may still be closing wandb when the other nodes are done).
#   * Logs: this script's own lines go to the job's --output file (default slurm-<job name>-<job id>.out in the
#     submission directory, appended to across requeues); each node's torchrun + ranks write
#     RUN_DIR/logs/job<JOBID>.attempt<N>.node<K>.log (N = Slurm's restart count, K = node index in the job).
#   * RUN_DIR: a `run_dir=...` override if given, else $RUN_DIR, else runs/<job name> (sbatch -J NAME; the default
#     job name is membart-pretrain). It is the same directory in every requeue of the job, and the trainer resumes
#     from RUN_DIR/checkpoints/latest when it exists: resubmitting with the same job name (or RUN_DIR) continues too.
#
# Preemption and time limits
#   --signal=B:USR1@600 asks Slurm to send SIGUSR1 to this script 10 minutes before the time limit (site preemption
#   hooks, or `scancel --signal=USR1 --batch JOBID` by hand, do the same). The script passes SIGUSR1 on to every
#   process of the training step (and again every 60 s until it ends, in case a rank had not yet installed its
#   handler); the trainer finishes its current step, writes a checkpoint and exits 75. When the step has ended
#   with a failure after such a signal, the script runs `scontrol requeue $SLURM_JOB_ID` (needs --requeue, the
#   default here): the same job id runs again later and resumes from that checkpoint. A step that ends with 0 — the
#   trainer reached train.max_steps (or the data ran out), even if the signal came late — is not requeued.
#   A job whose --time is shorter than the signal's lead gets the signal at once: with -t under ~30 minutes, also
#   pass e.g. --signal=B:USR1@120. SIGTERM (scancel, or the time limit itself) is not a requeue request: the
#   trainer still checkpoints if it can before Slurm's KillWait expires, and the job ends.
#
# Exit status: 0 training finished; 75 a requeue was wanted but `scontrol requeue` failed (e.g. --no-requeue):
# resubmit to continue; 2 usage/setup error; otherwise the training step's status (torchrun reports a failed
# rank as 1: the node logs hold the trainer's own code and its one-line reason, e.g. 2 a config or corpus that
# does not fit, 4 other ranks stalled or died, 5 too many damaged documents; see README "When something goes
# wrong"). A stalled or dead rank ends the job within train.collective_timeout_s, not at the time limit: the
# other ranks' collectives time out and they exit; srun ends the remaining nodes NODE_EXIT_GRACE seconds later.
#
# Environment
#   NPROC_PER_NODE   ranks per node. Default: the GPUs Slurm allocated per node (SLURM_GPUS_ON_NODE /
#                    --gpus-per-node), else `nvidia-smi -L`; with DS_ACCELERATOR=cpu: 1.
#   DS_ACCELERATOR   `cpu` for CPU-only clusters (DeepSpeed's CPU accelerator, gloo); also request --gpus-per-node=0.
#   RUN_DIR          run directory (see above).
#   PYTHON           interpreter. Default: the active venv/conda env, else REPO/.venv/bin/python, else python3.
#   MEMFORMERS_ROOT  the repository (default: where this script was submitted from, i.e. ../ of slurm/pretrain.sh,
#                    else the submission directory).
#   MASTER_PORT      rendezvous port on the first node (default 29500 + job id % 10000).
#   TORCHRUN_ARGS    extra torchrun options, word-split (e.g. "--log-dir=/tmp/tr --tee=3").
#   RESIGNAL_INTERVAL seconds between repeated SIGUSR1s to the step after a preemption signal (default 60).
#   NODE_EXIT_GRACE  seconds srun waits, once one node's torchrun has exited, before ending the others (default 120).
#
#SBATCH --job-name=membart-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --partition=gpu
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@600
#SBATCH --requeue
#SBATCH --export=ALL

set -uo pipefail

EX_USAGE=2
EX_REQUEUE_FAILED=75

log() { echo "[pretrain.sh $(date '+%F %T')] $*"; }
die() { log "error: $*" >&2; exit "$EX_USAGE"; }

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^#SBATCH --job-name/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi
[ -n "${SLURM_JOB_ID:-}" ] || die "not inside a Slurm job: submit with  sbatch [OPTIONS] slurm/pretrain.sh CONFIG [key=value ...]"
[ $# -ge 1 ] || die "usage: sbatch [OPTIONS] slurm/pretrain.sh CONFIG [section.key=value ...]"

# --- where things are -------------------------------------------------------------------------------------------------
is_repo() { [ -n "$1" ] && [ -f "$1/pretrain/train.py" ]; }
find_repo() {
  # sbatch runs a copy of this script from the spool directory; Slurm remembers the submitted path as Command=.
  local submitted
  submitted=$(scontrol show job "$SLURM_JOB_ID" -o 2>/dev/null | grep -o 'Command=[^ ]*' | head -n1 | cut -d= -f2-)
  for candidate in "${MEMFORMERS_ROOT:-}" "${submitted:+$(dirname "$(dirname "$submitted")")}" \
                   "${SLURM_SUBMIT_DIR:-}" "$(dirname "$(dirname "${BASH_SOURCE[0]}")")"; do
    if is_repo "$candidate"; then (cd "$candidate" && pwd); return 0; fi
  done
  return 1
}
REPO=$(find_repo) || die "cannot find the memformers repository (pretrain/train.py): set MEMFORMERS_ROOT"

if [ -z "${PYTHON:-}" ]; then
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then PYTHON=$VIRTUAL_ENV/bin/python
  elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then PYTHON=$CONDA_PREFIX/bin/python
  elif [ -x "$REPO/.venv/bin/python" ]; then PYTHON=$REPO/.venv/bin/python
  else PYTHON=$(command -v python3 || command -v python) || die "no python found: set PYTHON"
  fi
fi

CONFIG=$1
shift
[ -f "$CONFIG" ] || die "config $CONFIG not found (relative paths are taken from $PWD)"
CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")

RUN_DIR_OVERRIDE=
for arg in "$@"; do
  case $arg in run_dir=*) RUN_DIR_OVERRIDE=${arg#run_dir=} ;; esac
done
if [ -n "$RUN_DIR_OVERRIDE" ]; then
  RUN_DIR=$RUN_DIR_OVERRIDE
else
  RUN_DIR=${RUN_DIR:-runs/$SLURM_JOB_NAME}
fi
case $RUN_DIR in /*) ;; *) RUN_DIR=$PWD/$RUN_DIR ;; esac
[ -n "$RUN_DIR_OVERRIDE" ] || set -- "$@" "run_dir=$RUN_DIR"
ATTEMPT=${SLURM_RESTART_COUNT:-0}
LOG_DIR=$RUN_DIR/logs
mkdir -p "$LOG_DIR" || die "cannot create $LOG_DIR"

# --- the shape of the job -----------------------------------------------------------------------------------------------
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
if [ -z "${NPROC_PER_NODE:-}" ]; then
  if [ "${DS_ACCELERATOR:-}" = cpu ]; then
    NPROC_PER_NODE=1
  else
    gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}
    gpus=${gpus##*:}
    if ! [[ "$gpus" =~ ^[0-9]+$ ]] || [ "$gpus" -eq 0 ]; then
      gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    fi
    [ "${gpus:-0}" -gt 0 ] || die "no GPUs allocated or visible: request them (--gpus-per-node=N), or set NPROC_PER_NODE, or DS_ACCELERATOR=cpu for a CPU run"
    NPROC_PER_NODE=$gpus
  fi
fi
[[ "$NPROC_PER_NODE" =~ ^[1-9][0-9]*$ ]] || die "NPROC_PER_NODE must be a positive integer, got '$NPROC_PER_NODE'"
WORLD_SIZE=$((NNODES * NPROC_PER_NODE))

HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
HEAD_ADDR=$(scontrol show node "$HEAD_NODE" -o 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2-)
export MASTER_ADDR=${HEAD_ADDR:-$HEAD_NODE}
export MASTER_PORT=${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 10000))}

# CPUs for the step: what the job has on its smallest node (or --cpus-per-task), so torchrun and its ranks are not
# confined to one CPU by the step's default of 1 CPU per task.
STEP_CPUS=${SLURM_CPUS_PER_TASK:-$(echo "${SLURM_JOB_CPUS_PER_NODE:-1}" | tr ',' '\n' | sed 's/(.*//' | sort -n | head -n1)}

export PYTHONUNBUFFERED=1
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

# shellcheck disable=SC2206  # TORCHRUN_ARGS is word-split on purpose
LAUNCH=("$PYTHON" -m torch.distributed.run
        --nnodes="$NNODES" --nproc-per-node="$NPROC_PER_NODE"
        --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID-$ATTEMPT"
        --max-restarts=0 ${TORCHRUN_ARGS:-}
        "$REPO/pretrain/train.py" --config "$CONFIG" "$@")

# What each node's srun task runs: torchrun with SIGUSR1 ignored (its default action would kill it and orphan the
# ranks; the ranks install their own handler), plus forwarding of SIGUSR1 to torchrun's children, for proctrack
# plugins that signal the task's process group only (torchrun starts each rank in a session of its own).
# SIGTERM/SIGINT reach torchrun from Slurm directly; torchrun passes them on and waits for its ranks.
read -r -d '' NODE_LAUNCHER <<'EOF'
launcher=
forward_usr1() { [ -n "$launcher" ] && pkill -USR1 -P "$launcher" 2>/dev/null; return 0; }
trap forward_usr1 USR1
trap ':' TERM INT
( trap '' USR1; exec "$@" ) &
launcher=$!
while kill -0 "$launcher" 2>/dev/null; do wait "$launcher"; done
wait "$launcher"; rc=$?
echo "[pretrain.sh node $SLURM_NODEID ($(hostname))] torchrun exited with $rc"
exit "$rc"
EOF

# --- signals ------------------------------------------------------------------------------------------------------------
STEP_PID=
PREEMPTED=0
TERMINATED=0
LAST_FORWARD=0
RESIGNAL_INTERVAL=${RESIGNAL_INTERVAL:-60}
NODE_EXIT_GRACE=${NODE_EXIT_GRACE:-120}
REQUEUEING=0

forward_preemption() {
  [ -n "$STEP_PID" ] || return 0
  LAST_FORWARD=$SECONDS
  scancel --quiet --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null || kill -USR1 "$STEP_PID" 2>/dev/null || true
}
on_usr1() {
  if [ "$PREEMPTED" = 0 ]; then
    log "SIGUSR1: asking the trainer to checkpoint and stop; the job will be requeued"
  fi
  PREEMPTED=1
  forward_preemption
}
on_term() {
  [ "$REQUEUEING" = 1 ] && return 0  # Slurm ending this attempt after our own requeue
  TERMINATED=1
  log "SIGTERM: the job is being cancelled or has reached its time limit (no requeue)"
}
trap on_usr1 USR1
trap on_term TERM

# --- run ----------------------------------------------------------------------------------------------------------------
log "job $SLURM_JOB_ID (${SLURM_JOB_NAME}) attempt $ATTEMPT on $SLURM_JOB_NODELIST: $NNODES node(s) x $NPROC_PER_NODE" \
    "rank(s) = world size $WORLD_SIZE, accelerator ${DS_ACCELERATOR:-auto}"
log "repo $REPO, python $PYTHON"
log "config $CONFIG $*"
log "run dir $RUN_DIR (resumes from checkpoints/latest when present)"
log "rendezvous c10d at $MASTER_ADDR:$MASTER_PORT (first node $HEAD_NODE); node logs $LOG_DIR/job$SLURM_JOB_ID.attempt$ATTEMPT.node*.log"

srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --cpus-per-task="$STEP_CPUS" \
     --mpi=none --kill-on-bad-exit=0 --wait="$NODE_EXIT_GRACE" --export=ALL \
     --output="$LOG_DIR/job$SLURM_JOB_ID.attempt$ATTEMPT.node%n.log" \
     bash -c "$NODE_LAUNCHER" node-launcher "${LAUNCH[@]}" &
STEP_PID=$!
[ "$PREEMPTED" = 1 ] && forward_preemption  # the signal came while we were starting

while kill -0 "$STEP_PID" 2>/dev/null; do
  if [ "$PREEMPTED" = 1 ]; then
    sleep 1 &
    wait $! 2>/dev/null
    if [ $((SECONDS - LAST_FORWARD)) -ge "$RESIGNAL_INTERVAL" ] && kill -0 "$STEP_PID" 2>/dev/null; then
      forward_preemption
    fi
  else
    wait "$STEP_PID"
  fi
done
wait "$STEP_PID"
RC=$?

if [ "$RC" -eq 0 ]; then
  log "training step finished (exit 0): done"
  exit 0
fi
if [ "$PREEMPTED" = 1 ] && [ "$TERMINATED" = 0 ]; then
  latest=$(cat "$RUN_DIR/checkpoints/latest" 2>/dev/null || echo "none")
  log "training stopped after the preemption signal (step exit $RC; latest checkpoint: $latest): requeueing job $SLURM_JOB_ID"
  REQUEUEING=1
  if scontrol requeue "$SLURM_JOB_ID"; then
    sleep 300 &  # Slurm ends this attempt now; the requeued job starts again from the top
    wait $!
    exit 0
  fi
  REQUEUEING=0
  log "scontrol requeue failed (was the job submitted with --no-requeue?): resubmit to continue from $latest"
  exit "$EX_REQUEUE_FAILED"
fi
log "training step failed with exit status $RC; see $LOG_DIR/job$SLURM_JOB_ID.attempt$ATTEMPT.node*.log"
exit "$RC"
