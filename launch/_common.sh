# Shared launch logic, sourced by launch/<stage>.slurm and launch/local.sh (never run directly).
#
# Every stage runs as   torchrun ... -m aigp_train.cli <stage> <recipe> [key=value ...]
# under SLURM as        srun (one task per node) torchrun (ranks per node) with c10d rendezvous
#                       on the first node of the job.
#
# Environment (all optional):
#   AIGP_REPO            repository root (default: the sbatch submit dir, or this file's parent)
#   AIGP_CLUSTER         cluster file with NCCL env and devices per node
#                        (default: cluster/paper-16gpu.yaml under SLURM, cluster/local-cpu.yaml locally)
#   AIGP_NPROC_PER_NODE  ranks per node (default: the cluster's devices_per_node for training
#                        stages, 1 for generation stages whose vLLM replica spans the node's GPUs)
#   AIGP_PYTHON          python with aigp-train installed (default: python3)
#   AIGP_RDZV_PORT       rendezvous port on the first node (default: derived from the job id)
#
# Preemption (SLURM --requeue --signal=B:USR1@120): SLURM signals the batch shell, which forwards
# USR1 to the training processes (scancel --signal=USR1 reaches every process of the job's steps,
# but not torchrun itself: it runs with USR1 ignored, since torchrun would otherwise die of it and
# take its workers down). The workers checkpoint at the next optimizer step and exit 75; the batch
# shell then requeues the job (`scontrol requeue`), and the requeued job resumes from the checkpoint.
# SIGTERM (scancel, time limit) reaches the workers directly and is handled the same way.

_aigp_die() { echo "aigp launch: $*" >&2; exit 2; }

_aigp_setup() {
  local ranks="$1"
  AIGP_PYTHON="${AIGP_PYTHON:-python3}"
  cd "$AIGP_REPO" || _aigp_die "AIGP_REPO=$AIGP_REPO is not a folder"
  [[ -f "$AIGP_CLUSTER" || -f "$AIGP_REPO/$AIGP_CLUSTER" ]] || _aigp_die "cluster file $AIGP_CLUSTER not found (set AIGP_CLUSTER)"
  local lines
  lines="$("$AIGP_PYTHON" -m aigp_train.distributed.launch_env "$AIGP_CLUSTER" --ranks "$ranks")" \
    || _aigp_die "cannot read cluster file $AIGP_CLUSTER"
  eval "$lines"
  AIGP_NPROC_PER_NODE="${AIGP_NPROC_PER_NODE:-$AIGP_CLUSTER_RANKS_PER_NODE}"
  if [[ "$AIGP_CLUSTER_BACKEND" == "gloo" ]]; then
    export DS_ACCELERATOR=cpu  # DeepSpeed on CPU with gloo (DESIGN.md §6)
  fi
  export WANDB_MODE="${WANDB_MODE:-offline}"
  export PYTHONUNBUFFERED=1
}

# The first argument is a stage's recipe, or a command's input (a cluster file, the run folder that
# `aigp export` reads): it must exist before a job spends its nodes.
_aigp_check_args() {
  local stage="$1" first="${2:-}"
  [[ -n "$first" ]] || _aigp_die "usage: sbatch launch/$stage.slurm <recipe.yaml> [key=value ...] (commands: see the script's header)"
  [[ -e "$first" ]] || _aigp_die "$first not found (paths are relative to $AIGP_REPO)"
}

# aigp_slurm_stage <stage> <devices|1> <recipe> [key=value ...]   -- inside an sbatch job
aigp_slurm_stage() {
  local stage="$1" ranks="$2"
  shift 2
  AIGP_REPO="${AIGP_REPO:-${SLURM_SUBMIT_DIR:?not inside a SLURM job; use launch/local.sh}}"
  AIGP_CLUSTER="${AIGP_CLUSTER:-cluster/paper-16gpu.yaml}"
  _aigp_setup "$ranks"
  _aigp_check_args "$stage" "$@"
  local head port nnodes
  head="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
  nnodes="${SLURM_JOB_NUM_NODES:-1}"
  port="${AIGP_RDZV_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"
  echo "aigp launch: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) $stage on $nnodes node(s) x" \
       "$AIGP_NPROC_PER_NODE rank(s), rendezvous $head:$port, cluster $AIGP_CLUSTER" >&2

  AIGP_PREEMPTED=0
  trap '_aigp_on_preempt USR1' USR1
  trap '_aigp_on_preempt TERM' TERM
  # bash -c 'trap "" USR1; exec ...': torchrun (and only it: the workers install their own
  # handlers) ignores USR1; see the header.
  srun --nodes="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    bash -c 'trap "" USR1; exec "$@"' aigp-launch \
    torchrun --nnodes="$nnodes" --nproc_per_node="$AIGP_NPROC_PER_NODE" \
      --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head:$port" --max_restarts=0 \
      -m aigp_train.cli "$stage" "$@" &
  local srun_pid=$! rc=0
  # `wait` returns early when a trapped signal arrives: keep waiting until srun itself exits.
  while true; do
    wait "$srun_pid" && rc=0 || rc=$?
    kill -0 "$srun_pid" 2>/dev/null || break
  done
  if [[ "$AIGP_PREEMPTED" == "1" ]]; then
    echo "aigp launch: preempted; requeueing job $SLURM_JOB_ID (it resumes from its last checkpoint)" >&2
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  return "$rc"
}

_aigp_on_preempt() {
  AIGP_PREEMPTED=1
  echo "aigp launch: got SIG$1; asking the training processes to checkpoint" >&2
  scancel --signal=USR1 "$SLURM_JOB_ID" || true
}

# aigp_local_stage <stage> <devices|1> <recipe> [key=value ...]   -- one machine, no SLURM
aigp_local_stage() {
  local stage="$1" ranks="$2"
  shift 2
  AIGP_CLUSTER="${AIGP_CLUSTER:-cluster/local-cpu.yaml}"
  _aigp_setup "$ranks"
  _aigp_check_args "$stage" "$@"
  echo "aigp launch: $stage on this machine x $AIGP_NPROC_PER_NODE rank(s), cluster $AIGP_CLUSTER" >&2
  exec torchrun --standalone --nnodes=1 --nproc_per_node="$AIGP_NPROC_PER_NODE" --max_restarts=0 \
    -m aigp_train.cli "$stage" "$@"
}
