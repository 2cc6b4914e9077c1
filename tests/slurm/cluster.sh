#!/usr/bin/env bash
# A private single-node Slurm on this machine, for headhunt's Slurm test and for trying the
# examples in examples/slurm by hand:
#
#   tests/slurm/cluster.sh start DIR   # writes DIR/slurm.conf, starts munged, slurmctld, slurmd
#   export SLURM_CONF=DIR/slurm.conf   # then sbatch, squeue, scontrol talk to it
#   tests/slurm/cluster.sh stop DIR    # stops the daemons it started
#
# Needs root and Debian's slurmctld, slurmd, slurm-client and munge packages (`install` puts
# them in with apt-get). The daemons run without systemd, on ports of their own, with every
# file under DIR, so an existing Slurm on the machine is left alone. `start` exits 3 with the
# reason on stderr when this machine cannot run them.
set -euo pipefail

cmd=${1:?usage: cluster.sh install|start DIR|stop DIR}

skip() { echo "$*" >&2; exit 3; }

case "$cmd" in
install)
  missing=()
  for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || skip "installing ${missing[*]} needs root"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  ;;
start)
  dir=$(realpath -m "${2:?usage: cluster.sh start DIR}")
  [ "$(id -u)" = 0 ] || skip "a private Slurm needs root (its daemons switch users and run jobs as the submitter)"
  for bin in slurmctld slurmd sbatch munged; do
    command -v "$bin" >/dev/null || skip "$bin is not installed (tests/slurm/cluster.sh install)"
  done
  mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
  node=$(hostname -s)
  cpus=$(nproc)
  memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
  # munged: its own socket and pid under DIR, the packaged key.
  [ -r /etc/munge/munge.key ] || skip "no /etc/munge/munge.key (the munge package creates it)"
  chown munge:munge "$dir/munge"
  runuser -u munge -- munged --socket="$dir/munge/munge.socket" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" --force \
    || skip "munged does not start here: $(tail -n 3 "$dir/munge/munged.log" 2>/dev/null)"
  cat > "$dir/slurm.conf" <<CONF
ClusterName=headhunt-test
SlurmctldHost=$node
SlurmUser=root
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
MinJobAge=600
NodeName=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=headhunt Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF" || skip "slurmctld does not start here: $(tail -n 3 "$dir/slurmctld.log" 2>/dev/null)"
  slurmd -f "$SLURM_CONF" || skip "slurmd does not start here: $(tail -n 3 "$dir/slurmd.log" 2>/dev/null)"
  # Ready when the node takes jobs.
  for _ in $(seq 60); do
    state=$(sinfo -h -n "$node" -o %t 2>/dev/null || true)
    case "$state" in idle*|mix*|alloc*) echo "slurm is up: node $node ($cpus CPUs), SLURM_CONF=$SLURM_CONF"; exit 0 ;; esac
    sleep 1
  done
  skip "the node did not come up within 60 s (state: ${state:-none}); see $dir/slurmctld.log and $dir/slurmd.log"
  ;;
stop)
  dir=$(realpath -m "${2:?usage: cluster.sh stop DIR}")
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    if [ -s "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$pidfile"
    fi
  done
  ;;
*)
  echo "usage: cluster.sh install|start DIR|stop DIR" >&2
  exit 2
  ;;
esac
