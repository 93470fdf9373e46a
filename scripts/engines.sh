#!/usr/bin/env bash
# Real engines for the `engines` tests, installed and started on this machine (as root),
# idempotently: a second run changes nothing and returns at once.
#
#   scripts/engines.sh slurm    munge + a one-node Slurm cluster (slurmctld, slurmd) with
#                               proctrack/cgroup and task/cgroup (cgroup v1 or v2, as the host has)
#   scripts/engines.sh docker   dockerd (Debian's docker.io)
#   scripts/engines.sh stop     stops what this script started (slurmd, slurmctld, munged, dockerd)
#
# Debian packages (bookworm): slurm-wlm, munge, docker.io. On a machine without root, without
# apt-get or where the packages cannot be installed, it says why and exits 2 (the tests then
# skip with that reason); a daemon that does not come up is exit 1 (the tests fail).
set -euo pipefail

STATE=/var/lib/sandbox-kernel-engines
REPO=$(cd "$(dirname "$0")/.." && pwd)
NODE=$(hostname -s)  # the name squeue reports (%B): a Hub must be able to resolve it
PARTITION=sbx
log() { echo "engines.sh: $*" >&2; }
die() { log "$*"; exit 2; }   # the engine cannot run here at all: the tests skip with this reason
fail() { log "$*"; exit 1; }  # it should run but does not: the tests fail

[ "$(id -u)" = 0 ] || die "needs root (installs packages, starts daemons)"

apt_install() {  # apt_install CMD PACKAGE...
    local cmd=$1; shift
    command -v "$cmd" >/dev/null && return 0
    command -v apt-get >/dev/null || die "$cmd is missing and there is no apt-get to install $*"
    log "installing $* (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "$@" >"$STATE/apt.log" 2>&1; then
        apt-get update >>"$STATE/apt.log" 2>&1 || true
        apt-get install -y --no-install-recommends "$@" >>"$STATE/apt.log" 2>&1 \
            || die "apt-get install $* failed (see $STATE/apt.log)"
    fi
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# ------------------------------------------------------------------ munge
start_munge() {
    apt_install munged munge
    [ -s /etc/munge/munge.key ] || { /usr/sbin/mungekey --create --force 2>/dev/null || \
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
    fail "munged does not answer (see /var/log/munge/munged.log)"
}

# ------------------------------------------------------------------ slurm
cgroup_version() {
    if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then echo v2; else echo v1; fi
}

write_if_changed() {  # write_if_changed FILE (content on stdin); prints "changed" when it did
    local tmp; tmp=$(mktemp)
    cat >"$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
    install -m 0644 "$tmp" "$1"; rm -f "$tmp"; return 0
}

slurm_conf() {
    local mem cpus gres_line=""
    cpus=$(nproc)
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
    # Fake GPUs (tests/deploy/test_slurm.py gates them): two character devices Slurm hands out as GRES.
    if [ -c "$STATE/dev/sbxgpu0" ] && [ -c "$STATE/dev/sbxgpu1" ]; then gres_line=" Gres=gpu:2"; fi
    cat <<EOF
# Written by sandbox-kernel's scripts/engines.sh: a one-node cluster for the tests.
ClusterName=sbx
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
GresTypes=gpu
ReturnToService=2
Epilog=$STATE/slurm-epilog.sh
SchedulerType=sched/backfill
MpiDefault=none
KillWait=5
InactiveLimit=0
MinJobAge=30
SlurmdTimeout=60
SlurmctldParameters=enable_configless
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem$gres_line State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:64
EOF
}

cgroup_conf() {
    cat <<EOF
# Written by sandbox-kernel's scripts/engines.sh.
CgroupPlugin=cgroup/$(cgroup_version)
ConstrainCores=no
ConstrainRAMSpace=yes
ConstrainSwapSpace=yes
AllowedSwapSpace=0
ConstrainDevices=yes
EOF
}

gres_conf() {
    if [ -c "$STATE/dev/sbxgpu0" ]; then
        echo "NodeName=$NODE Name=gpu File=$STATE/dev/sbxgpu[0-1]"
    fi
}

start_slurm() {
    apt_install slurmctld slurmctld slurmd slurm-client
    install -d -m 0755 "$STATE" "$STATE/slurmctld" "$STATE/slurmd" "$STATE/dev" /etc/slurm
    # Fake accelerator device nodes (NVIDIA's major, 195; no driver behind them): Slurm's
    # devices cgroup allows them to a job that has them as GRES (open: ENXIO) and denies the rest (EPERM).
    for i in 0 1; do [ -c "$STATE/dev/sbxgpu$i" ] || mknod -m 0666 "$STATE/dev/sbxgpu$i" c 195 "$i"; done
    local changed=0
    # the Epilog removes the cgroups a cancelled root kernel leaves in its job (docs/deploy-slurm.md)
    install -m 0755 "$REPO/sandbox_kernel/slurm-epilog.sh" "$STATE/slurm-epilog.sh"
    slurm_conf | write_if_changed /etc/slurm/slurm.conf && changed=1
    cgroup_conf | write_if_changed /etc/slurm/cgroup.conf && changed=1
    gres_conf | write_if_changed /etc/slurm/gres.conf && changed=1
    start_munge
    if [ $changed = 1 ]; then
        for d in slurmd slurmctld; do
            if alive "$STATE/$d.pid"; then log "config changed: restarting $d"; kill "$(cat "$STATE/$d.pid")"; fi
        done
        for _ in $(seq 100); do alive "$STATE/slurmd.pid" || alive "$STATE/slurmctld.pid" || break; sleep 0.1; done
    fi
    if ! alive "$STATE/slurmctld.pid"; then log "starting slurmctld"; /usr/sbin/slurmctld; fi
    if ! alive "$STATE/slurmd.pid"; then log "starting slurmd"; /usr/sbin/slurmd -N "$NODE"; fi
    for _ in $(seq 300); do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        case "$state" in
            idle*|mixed*|allocated*) return 0 ;;
            down*|drain*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.2
    done
    fail "Slurm node $NODE is not up (state '${state:-none}'; see $STATE/slurmctld.log and $STATE/slurmd.log)"
}

stop_all() {
    for d in slurmd slurmctld; do alive "$STATE/$d.pid" && kill "$(cat "$STATE/$d.pid")" || true; done
    pid=$(pgrep -u munge -x munged || true); [ -n "$pid" ] && kill "$pid" || true
    alive "$STATE/dockerd.pid" && kill "$(cat "$STATE/dockerd.pid")" || true
}

# ------------------------------------------------------------------ docker
start_docker() {
    apt_install dockerd docker.io
    install -d -m 0755 "$STATE"
    if docker info >/dev/null 2>&1; then return 0; fi
    log "starting dockerd"
    # No registry is reachable here: images come from `docker import` (tests/engines_docker.py).
    nohup /usr/sbin/dockerd --pidfile "$STATE/dockerd.pid" >"$STATE/dockerd.log" 2>&1 &
    for _ in $(seq 300); do docker info >/dev/null 2>&1 && return 0; sleep 0.2; done
    fail "dockerd does not answer (see $STATE/dockerd.log)"
}

mkdir -p "$STATE"
case "${1:-all}" in
    slurm) start_slurm ;;
    docker) start_docker ;;
    all) start_slurm; start_docker ;;
    stop) stop_all ;;
    *) die "usage: $0 [slurm|docker|all|stop]" ;;
esac
