#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests of `sweep --engine slurm`.
#
# Idempotent: does nothing when the node is idle under this script's configuration (or under a
# configuration it did not write: a real cluster is left alone). As root it installs slurm-wlm and
# munge with apt-get when they are missing, writes a munge key and /etc/slurm/slurm.conf (one node
# with this machine's CPUs and memory, one default partition, no cgroups, short timeouts), starts
# munged, slurmctld and slurmd (restarting the two it started before when the configuration
# changed), and waits until `sinfo` shows the node idle. On failure it prints one line saying why
# and exits non-zero; the Slurm tests then skip with their own one-line reason.
set -uo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by filter-templates tests/slurm/up.sh"
NODE=$(hostname -s)
STATE=/var/spool/slurm-ft
LOGS=/var/log/slurm-ft
PARTITION=${FT_SLURM_PARTITION:-debug}
CTLD_PID=/run/slurmctld-ft.pid
SLURMD_PID=/run/slurmd-ft.pid

fail() { echo "tests/slurm/up.sh: $*" >&2; exit 1; }

node_idle() {
    command -v sinfo >/dev/null 2>&1 || return 1
    [[ "$(timeout 10 sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null)" =~ ^(idle|mix|alloc)$ ]]
}

wanted_conf() {
    local cpus mem_mb
    cpus=$(nproc)
    mem_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
    cat <<EOF
$MARK
ClusterName=filter-templates
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it starts again (120 by default)
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
InactiveLimit=0
KillWait=5
MinJobAge=600
SchedulerParameters=sched_min_interval=100000
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

WANTED=$(wanted_conf)
if node_idle; then
    # a cluster this script did not configure, or ours unchanged: nothing to do
    if [[ ! -f $CONF ]] || ! grep -qF "$MARK" "$CONF" || [[ "$(cat "$CONF")" == "$WANTED" ]]; then
        exit 0
    fi
fi
[[ $(id -u) -eq 0 ]] || fail "needs root to install and start Slurm (run it with sudo)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "slurm-wlm and munge are missing and apt-get is not available"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q slurm-wlm munge; } >/tmp/slurm-up-apt.log 2>&1 \
        || fail "apt-get install slurm-wlm munge failed (log: /tmp/slurm-up-apt.log)"
fi

if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    fail "$CONF exists and was not written by this script; not touching a real cluster's configuration"
fi

# munge: a key, its runtime folder, the daemon (as the munge user)
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none || fail "cannot write a munge key"
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
if ! pgrep -u munge -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge/munged.log)"
fi

# slurm.conf: this machine as the one node; daemons this script started under another one restart
mkdir -p "$STATE/ctld" "$STATE/d" "$LOGS" /etc/slurm
if [[ ! -f $CONF || "$(cat "$CONF")" != "$WANTED" ]]; then
    printf '%s\n' "$WANTED" >"$CONF"
    for pidfile in "$SLURMD_PID" "$CTLD_PID"; do
        pid=$(cat "$pidfile" 2>/dev/null)
        if [[ -n $pid ]] && kill "$pid" 2>/dev/null; then
            for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        fi
    done
fi

# the daemons (each forks into the background)
pgrep -x slurmctld >/dev/null || slurmctld || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
pgrep -x slurmd >/dev/null || slurmd || fail "slurmd did not start (see $LOGS/slurmd.log)"

state=""
deadline=$((SECONDS + 60))
while ((SECONDS < deadline)); do
    node_idle && exit 0
    state=$(timeout 10 sinfo -h -N -n "$NODE" -o '%t' 2>/dev/null)
    if [[ $state == down* || $state == drain* ]]; then
        scontrol update nodename="$NODE" state=resume >/dev/null 2>&1
    fi
    sleep 1
done
fail "node $NODE did not become idle within 60 s (sinfo says: '${state:-no answer}'; logs in $LOGS)"
