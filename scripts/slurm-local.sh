#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (Debian/Ubuntu, as root), for the `slurm` tests and demos.
#
#   bash scripts/slurm-local.sh up       install munge/slurm/mariadb when missing, write the configs, start
#                                        the daemons, wait until the node is idle (idempotent)
#   bash scripts/slurm-local.sh down     stop the daemons this script started (by their pid files), nothing else
#   bash scripts/slurm-local.sh status   which daemons run, and sinfo
#
# The node has the machine's CPUs and memory (from `slurmd -C`); KDGRID_SLURM_CPUS overrides the CPU count
# (slurmd is then told to trust the config). Slurm 22.05 as packaged by Debian 12: no cgroup.conf (it refuses
# CgroupPlugin=disabled), so processes are tracked by proctrack/linuxproc and tasks are not confined.
# State, logs and pid files live in $KDGRID_SLURM_STATE (default /var/lib/kdgrid-slurm). The configs go to
# /etc/slurm, where sbatch/sacct/submitit look for them; a slurm.conf this script did not write is left alone.
set -euo pipefail

STATE="${KDGRID_SLURM_STATE:-/var/lib/kdgrid-slurm}"
PIDS="$STATE/pids"
LOGS="$STATE/log"
ETC=/etc/slurm
MARK="# written by kdgrid scripts/slurm-local.sh"
DB_PASS=kdgrid-local
CLUSTER=kdgrid
PACKAGES=(munge slurmctld slurmd slurmdbd slurm-client mariadb-server)

say() { echo "slurm-local: $*" >&2; }
die() { say "$*"; exit 1; }

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS WHAT CMD...
  local limit=$1 what=$2; shift 2
  for _ in $(seq "$((limit * 5))"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "$what did not come up within ${limit}s (logs in $LOGS)"
}

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get to install them"
  say "installing ${missing[*]}"
  # policy-rc.d keeps the packages' own services from starting: this script starts exactly what it stops
  local policy=/usr/sbin/policy-rc.d created=""
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  [ -n "$created" ] && rm -f "$policy"
  return 0
}

write_configs() {
  local node cpus mem extra=""
  node=$(hostname -s)
  read -r cpus mem < <(slurmd -C | awk '/^NodeName/ {for (i = 1; i <= NF; i++) { split($i, kv, "=");
    if (kv[1] == "CPUs") c = kv[2]; if (kv[1] == "RealMemory") m = kv[2] } print c, m}')
  if [ -n "${KDGRID_SLURM_CPUS:-}" ]; then cpus=$KDGRID_SLURM_CPUS; extra="SlurmdParameters=config_overrides"; fi
  mem=$((mem * 9 / 10))  # leave slurmd room: a node reporting less memory than configured is drained
  if [ -e "$ETC/slurm.conf" ] && ! grep -qF "$MARK" "$ETC/slurm.conf"; then
    die "$ETC/slurm.conf exists and was not written by this script; not touching it"
  fi
  mkdir -p "$ETC" "$STATE/ctld" "$STATE/spool" "$PIDS" "$LOGS"
  cat >"$ETC/slurm.conf.new" <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus))
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
# short timers: a test cluster should notice a restarted node or a cancelled job quickly
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=60
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
$extra
NodeName=$node CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$ETC/slurm.conf.new" "$ETC/slurm.conf"
  cat >"$ETC/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$PIDS/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$ETC/slurmdbd.conf"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi  # someone's munged already answers
  mkdir -p /run/munge && chown munge:munge /run/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create 2>/dev/null || create-munge-key -f; chown munge:munge /etc/munge/munge.key; }
  # munged runs as the munge user, which cannot write our pid directory: let it use its own, then copy it
  su -s /bin/sh munge -c "munged --force" || die "munged did not start"
  wait_for 10 munged sh -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$PIDS/munged.pid"
}

start_mariadb() {
  if mysqladmin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1; then return 0; fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  setsid mariadbd --user=mysql --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
    --pid-file=/run/mysqld/kdgrid.pid --skip-networking=0 --bind-address=127.0.0.1 \
    >"$LOGS/mariadb.log" 2>&1 </dev/null &
  echo $! >"$PIDS/mariadb.pid"  # mariadbd runs as mysql and cannot write our pid directory itself
  wait_for 60 mariadb mysqladmin --socket=/run/mysqld/mysqld.sock ping
  mysql --socket=/run/mysqld/mysqld.sock -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
}

start_daemon() {  # start_daemon NAME PIDFILE CMD...
  local name=$1 pidfile=$2; shift 2
  if pid_alive "$pidfile"; then return 0; fi
  pgrep -x "$name" >/dev/null && die "a $name this script did not start is running; stop it first"
  "$@" || die "$name did not start (see $LOGS/$name.log)"
}

node_state() { sinfo -h -N -o %t 2>/dev/null | head -1; }

up() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts system daemons)"
  install_packages
  write_configs
  start_munge
  start_mariadb
  start_daemon slurmdbd "$PIDS/slurmdbd.pid" slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  start_daemon slurmctld "$PIDS/slurmctld.pid" slurmctld
  wait_for 30 slurmctld scontrol ping
  start_daemon slurmd "$PIDS/slurmd.pid" slurmd
  local st
  for _ in $(seq 300); do
    st=$(node_state)
    case "$st" in
      idle|mix|alloc) say "up: node $(hostname -s) $st"; return 0 ;;
      drain*|drng|down*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  die "node did not become idle (state '$st'; logs in $LOGS)"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
  local name=$1 pidfile=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$name" ]; then
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    say "stopped $name ($pid)"
  fi
  rm -f "$pidfile"
}

down() {
  stop_pidfile slurmd "$PIDS/slurmd.pid"
  stop_pidfile slurmctld "$PIDS/slurmctld.pid"
  stop_pidfile slurmdbd "$PIDS/slurmdbd.pid"
  stop_pidfile mariadbd "$PIDS/mariadb.pid"
  stop_pidfile munged "$PIDS/munged.pid"
}

status() {
  local rc=0
  for d in munged mariadb slurmdbd slurmctld slurmd; do
    if pid_alive "$PIDS/$d.pid"; then echo "$d: running (pid $(cat "$PIDS/$d.pid"))"; else echo "$d: not started by this script"; rc=1; fi
  done
  sinfo 2>/dev/null || rc=1
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
