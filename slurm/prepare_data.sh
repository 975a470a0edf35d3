#!/usr/bin/env bash
# Shard a large corpus in parallel on Slurm: an array job of N slice tasks, then one job that merges them into the
# same SHARD_DIR that a single `python data_prep/shard_documents.py ARGS` would write.
#
#   slurm/prepare_data.sh [--slices N] [--parallel M] [--wait] [SBATCH OPTIONS ...] -- SHARD_DOCUMENTS_ARGS ...
#
#   slurm/prepare_data.sh --slices 64 --parallel 16 -p cpu -t 08:00:00 --cpus-per-task=32 -- \
#       --input /data/corpus/ --tokenizer tok/ --output /data/shards --segment-length 512 --val-fraction 0.01
#
# Run it on a login node, from the repository root (the jobs run in the current directory, so relative --input /
# --tokenizer / --output paths mean the same there). It submits, with `sbatch`:
#   1. an array job of N tasks (--array=0-<N-1>, at most M running at once with --parallel M); task I runs
#        python data_prep/shard_documents.py ARGS --num-slices N --slice-index I --workers <its CPUs>
#      which tokenizes and writes slice I of the inputs (--workers defaults to the task's --cpus-per-task);
#   2. a merge job that starts when every task has succeeded (--dependency=afterok:<array job>) and runs
#        python data_prep/shard_documents.py ARGS --num-slices N --merge --workers <its CPUs>
#      which writes the merged shards (one worker process per CPU), SHARD_DIR/manifest.json and index.npy. A failed slice cancels the merge
#      (--kill-on-invalid-dep=yes). Re-running the same command finishes what is missing: slices already written
#      are kept (shard_documents resumes) and a finished SHARD_DIR is left as it is.
#
# Options
#   --slices N       number of slices = array tasks (default 16)
#   --parallel M     at most M tasks at once (sbatch --array=...%M; default: no limit)
#   --wait           block until the merge job ends; exit with its status (0: SHARD_DIR complete)
#   SBATCH OPTIONS   everything else before `--` goes to both sbatch calls (partition, time, account, CPUs,
#                    memory, ...), overriding the #SBATCH defaults below. The submitting environment passes
#                    through (sbatch's default --export=ALL).
# Logs: slurm-<job name>-<array job id>_<task>.out per slice and slurm-<job name>-merge-<job id>.out, in the
# current directory (override with -o / -e).
#
# Environment: PYTHON (default: the active venv/conda env, else REPO/.venv/bin/python, else python3),
# MEMFORMERS_ROOT (the repository; default: ../ of this script), SHARD_DOCUMENTS (the sharding script; default
# REPO/data_prep/shard_documents.py).
#
# Exit status: 0 submitted (or, with --wait, merged); 2 usage error or a sharding script without --num-slices;
# with --wait, otherwise the merge job's status (1 when it was cancelled because a slice failed).
#
#SBATCH --job-name=membart-prepare-data
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00

set -uo pipefail

log() { echo "[prepare_data.sh $(date '+%F %T')] $*"; }
die() { log "error: $*" >&2; exit 2; }
usage() { sed -n '2,/^#SBATCH --job-name/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

is_repo() { [ -n "$1" ] && [ -f "$1/data_prep/shard_documents.py" ]; }
find_repo() {
  local submitted=
  if [ -n "${SLURM_JOB_ID:-}" ]; then  # sbatch runs a spool copy of this script; Command= is the submitted path
    submitted=$(scontrol show job "$SLURM_JOB_ID" -o 2>/dev/null | grep -o 'Command=[^ ]*' | head -n1 | cut -d= -f2-)
  fi
  for candidate in "${MEMFORMERS_ROOT:-}" "${submitted:+$(dirname "$(dirname "$submitted")")}" \
                   "$(dirname "$(dirname "${BASH_SOURCE[0]}")")" "${SLURM_SUBMIT_DIR:-}" "$PWD"; do
    if is_repo "$candidate"; then (cd "$candidate" && pwd); return 0; fi
  done
  return 1
}
find_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then echo "$VIRTUAL_ENV/bin/python"
  elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then echo "$CONDA_PREFIX/bin/python"
  elif [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"
  else command -v python3 || command -v python
  fi
}
has_option() {  # has_option NAME ARGS...: whether ARGS hold --NAME or --NAME=...
  local name=$1 arg
  shift
  for arg in "$@"; do
    case $arg in "$name" | "$name"=*) return 0 ;; esac
  done
  return 1
}

# --- arguments --------------------------------------------------------------------------------------------------------
PHASE=submit
SLICES=16
PARALLEL=
WAIT=0
SBATCH_OPTS=()
while [ $# -gt 0 ]; do
  case $1 in
    --) shift; break ;;
    -h | --help) usage; exit 0 ;;
    --slices) SLICES=${2:-}; shift 2 || die "--slices needs a value" ;;
    --slices=*) SLICES=${1#*=}; shift ;;
    --parallel) PARALLEL=${2:-}; shift 2 || die "--parallel needs a value" ;;
    --parallel=*) PARALLEL=${1#*=}; shift ;;
    --wait) WAIT=1; shift ;;
    --phase=*) PHASE=${1#*=}; shift ;;  # internal: what a submitted job does (slice | merge)
    *) SBATCH_OPTS+=("$1"); shift ;;
  esac
done
ARGS=("$@")
[[ "$SLICES" =~ ^[1-9][0-9]*$ ]] || die "--slices must be a positive integer, got '$SLICES'"
[ -z "$PARALLEL" ] || [[ "$PARALLEL" =~ ^[1-9][0-9]*$ ]] || die "--parallel must be a positive integer, got '$PARALLEL'"
[ ${#ARGS[@]} -gt 0 ] || { usage >&2; die "no shard_documents.py arguments after --"; }
for reserved in --num-slices --slice-index --merge; do
  has_option "$reserved" "${ARGS[@]}" && die "$reserved is set by this script; leave it out"
done

REPO=$(find_repo) || die "cannot find the memformers repository (data_prep/shard_documents.py): set MEMFORMERS_ROOT"
PYTHON=$(find_python) || die "no python found: set PYTHON"
SHARD_DOCUMENTS=${SHARD_DOCUMENTS:-$REPO/data_prep/shard_documents.py}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

# --- inside the jobs --------------------------------------------------------------------------------------------------
case $PHASE in
  slice)
    [ -n "${SLURM_ARRAY_TASK_ID:-}" ] || die "--phase=slice runs as a task of the array job"
    WORKERS=()
    has_option --workers "${ARGS[@]}" || WORKERS=(--workers "${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}")
    log "job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname): slice $SLURM_ARRAY_TASK_ID of $SLICES"
    "$PYTHON" "$SHARD_DOCUMENTS" "${ARGS[@]}" "${WORKERS[@]}" --num-slices "$SLICES" \
      --slice-index "$SLURM_ARRAY_TASK_ID" --no-progress
    rc=$?
    log "slice $SLURM_ARRAY_TASK_ID of $SLICES: exit $rc"
    exit "$rc"
    ;;
  merge)
    WORKERS=()  # the merged shards are written by worker processes too
    has_option --workers "${ARGS[@]}" || WORKERS=(--workers "${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}")
    log "job $SLURM_JOB_ID on $(hostname): merging $SLICES slices"
    "$PYTHON" "$SHARD_DOCUMENTS" "${ARGS[@]}" "${WORKERS[@]}" --num-slices "$SLICES" --merge --no-progress
    rc=$?
    log "merge: exit $rc"
    exit "$rc"
    ;;
  submit) ;;
  *) die "unknown --phase=$PHASE" ;;
esac

# --- on the login node: submit ----------------------------------------------------------------------------------------
[ -z "${SLURM_ARRAY_TASK_ID:-}" ] || die "run this on a login node (or in a job step), not as an array task"
command -v sbatch >/dev/null || die "sbatch not found: run this where Slurm's commands are"
HELP=$("$PYTHON" "$SHARD_DOCUMENTS" --help 2>&1)
[[ "$HELP" == *--num-slices* && "$HELP" == *--merge* ]] ||
  die "$SHARD_DOCUMENTS has no --num-slices/--slice-index/--merge: this version cannot shard in slices; run it as one job instead"
SCRIPT=$REPO/slurm/prepare_data.sh
NAME=membart-prepare-data
for ((i = 0; i < ${#SBATCH_OPTS[@]}; i++)); do  # the user's job name, if any, for the merge job's name
  case ${SBATCH_OPTS[i]} in
    -J | --job-name) NAME=${SBATCH_OPTS[i + 1]:-$NAME} ;;
    -J?*) NAME=${SBATCH_OPTS[i]#-J} ;;
    --job-name=*) NAME=${SBATCH_OPTS[i]#*=} ;;
  esac
done

ARRAY="0-$((SLICES - 1))${PARALLEL:+%$PARALLEL}"
ARRAY_JOB=$(sbatch --parsable --job-name="$NAME" --output="slurm-%x-%A_%a.out" "${SBATCH_OPTS[@]}" --array="$ARRAY" \
            "$SCRIPT" --phase=slice --slices="$SLICES" -- "${ARGS[@]}") || die "sbatch of the slice array failed"
ARRAY_JOB=${ARRAY_JOB%%;*}
log "submitted array job $ARRAY_JOB: $SLICES slice task(s) ($ARRAY)"

MERGE_OPTS=(--job-name="$NAME-merge" --output="slurm-%x-%j.out" "${SBATCH_OPTS[@]}"
            --dependency="afterok:$ARRAY_JOB" --kill-on-invalid-dep=yes)
MERGE_JOB_ARGS=("$SCRIPT" --phase=merge --slices="$SLICES" -- "${ARGS[@]}")
if [ "$WAIT" = 0 ]; then
  MERGE_JOB=$(sbatch --parsable "${MERGE_OPTS[@]}" "${MERGE_JOB_ARGS[@]}") || die "sbatch of the merge job failed"
  log "submitted merge job ${MERGE_JOB%%;*} (after array job $ARRAY_JOB succeeds)"
  exit 0
fi
log "submitting the merge job (after array job $ARRAY_JOB succeeds) and waiting for it"
MERGE_JOB=$(sbatch --wait --parsable "${MERGE_OPTS[@]}" "${MERGE_JOB_ARGS[@]}")
rc=$?
MERGE_JOB=${MERGE_JOB%%;*}
# sbatch --wait reports 0 for a job cancelled before it ran (a slice failed): ask Slurm how it ended
state=$(scontrol show job "$MERGE_JOB" -o 2>/dev/null | grep -o 'JobState=[^ ]*' | head -n1 | cut -d= -f2)
if [ "$rc" -eq 0 ] && [ -n "$state" ] && [ "$state" != COMPLETED ]; then
  failed=$(scontrol show job "$ARRAY_JOB" -o 2>/dev/null | grep -v 'JobState=COMPLETED' |
           grep -o 'ArrayTaskId=[^ ]*' | cut -d= -f2 | tr '\n' ' ')
  log "merge job $MERGE_JOB ended $state: slice task(s) ${failed:-?}of array job $ARRAY_JOB did not succeed" \
      "(see slurm-$NAME-${ARRAY_JOB}_<task>.out); run the same command again to finish"
  rc=1
fi
log "merge job $MERGE_JOB ended ${state:-} with exit status $rc"
exit "$rc"
