#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests marked `slurm`.
#
#   source tests/slurm_cluster.sh start   # starts munged, slurmctld, slurmd; exports SLURM_CONF
#   bash tests/slurm_cluster.sh status    # sinfo
#   bash tests/slurm_cluster.sh stop      # stops the daemons started here
#
# Needs Debian's slurmctld, slurmd, slurm-client and munge (`bash scripts/setup.sh --slurm`) and
# root. Settings known to work on these boxes (docs/launch.md): proctrack/linuxproc, task/none,
# SlurmUser=root, select/cons_tres, state and spool folders under a temp dir, the node declared
# with this box's hostname and its CPU count, munged running as the `munge` user.
# Idempotent: `start` on a running cluster only re-exports the environment.
# State lives in $AIGP_SLURM_DIR (default: /tmp/aigp-slurm); daemon logs are there too.

_aigp_slurm_main() {
  local cmd="${1:-start}"
  local dir="${AIGP_SLURM_DIR:-${TMPDIR:-/tmp}/aigp-slurm}"
  local conf="$dir/slurm.conf"
  local host
  host="$(hostname)"

  case "$cmd" in
    start)
      for bin in munged slurmctld slurmd sinfo; do
        if ! command -v "$bin" >/dev/null 2>&1; then
          echo "slurm_cluster.sh: '$bin' not found; install SLURM with 'bash scripts/setup.sh --slurm'." >&2
          return 1
        fi
      done
      if [[ "$(id -u)" != "0" ]]; then
        echo "slurm_cluster.sh: starting slurmctld/slurmd/munged needs root (run as root, e.g. in CI)." >&2
        return 1
      fi
      mkdir -p "$dir/state" "$dir/spool" "$dir/log"
      _aigp_slurm_munge "$dir" || return 1
      export SLURM_CONF="$conf"
      if _aigp_slurm_idle "$host"; then
        return 0
      fi
      _aigp_slurm_write_conf "$dir" "$host"
      _aigp_slurm_kill "$dir"
      # -i: ignore stale state from an earlier run (jobs of a previous CI box must not reappear).
      /usr/sbin/slurmctld -f "$conf" -i -L "$dir/log/slurmctld.log" || { tail -n 30 "$dir/log/slurmctld.log" >&2; return 1; }
      /usr/sbin/slurmd -f "$conf" -L "$dir/log/slurmd.log" || { tail -n 30 "$dir/log/slurmd.log" >&2; return 1; }
      local i
      for i in $(seq 1 60); do
        if _aigp_slurm_idle "$host"; then
          echo "slurm_cluster.sh: node $host idle (SLURM_CONF=$conf)" >&2
          return 0
        fi
        # A node that came up DOWN (e.g. after an unclean stop) is put back in service.
        scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
        sleep 1
      done
      echo "slurm_cluster.sh: node $host did not become idle within 60 s. sinfo says:" >&2
      sinfo -N -l >&2 || true
      tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
      return 1
      ;;
    stop)
      _aigp_slurm_kill "$dir"
      ;;
    status)
      SLURM_CONF="$conf" sinfo -N -l
      ;;
    *)
      echo "usage: source tests/slurm_cluster.sh start | bash tests/slurm_cluster.sh stop|status" >&2
      return 2
      ;;
  esac
}

_aigp_slurm_idle() {
  [[ -f "$SLURM_CONF" ]] || return 1
  local state
  state="$(sinfo -h -n "$1" -o '%t' 2>/dev/null | head -n 1)"
  [[ "$state" == "idle" || "$state" == "mix" || "$state" == "alloc" ]]
}

_aigp_slurm_munge() {
  local dir="$1"
  # A live munged answers a round trip; nothing to do then.
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged --force || { echo "slurm_cluster.sh: munged failed to start" >&2; return 1; }
  local i
  for i in $(seq 1 20); do
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "slurm_cluster.sh: munged does not answer (munge -n | unmunge failed)" >&2
  return 1
}

_aigp_slurm_write_conf() {
  local dir="$1" host="$2"
  local cpus mem_mb
  cpus="$(nproc)"
  mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)"
  cat >"$dir/slurm.conf" <<EOF
# Written by tests/slurm_cluster.sh: a single-node cluster on $host for the aigp-train tests.
ClusterName=aigp-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s). Starting it
# earlier (scontrol update StartTime=now) races the node's revoked credential and fails with RunTime 0.
AuthInfo=cred_expire=10
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
ReturnToService=2
# Requeue on preemption (launch/*.slurm use --requeue); the restart delay is cred_expire above.
JobRequeue=1
MinJobAge=300
KillWait=30
SchedulerType=sched/backfill
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

_aigp_slurm_kill() {
  local dir="$1" f pid
  for f in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    if [[ -f "$f" ]]; then
      pid="$(cat "$f")"
      if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      fi
      rm -f "$f"
    fi
  done
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -uo pipefail
  _aigp_slurm_main "$@"
  exit $?
else
  _aigp_slurm_main "$@"
fi
