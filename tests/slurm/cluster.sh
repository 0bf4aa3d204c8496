#!/usr/bin/env bash
# A real single-node SLURM cluster (munged + slurmctld + slurmd) for the workflow tests.
#
#   tests/slurm/cluster.sh install   apt-installs slurm-wlm and munge when missing (root)
#   tests/slurm/cluster.sh start     writes the config, starts the daemons, waits until the node is idle
#   tests/slurm/cluster.sh stop      cancels jobs, stops every daemon it started, removes the config links
#   tests/slurm/cluster.sh status    exit 0 when all daemons run and the node answers, 3 otherwise
#
# All state (config, munge key and socket, spool, logs, pid files) lives under $DSRL_SLURM_DIR
# (default /tmp/dsrl-slurm). The only things outside it are the symlinks /etc/slurm/{slurm,gres}.conf: srun
# inside a job runs with SLURM_* variables stripped by the Snakemake jobstep plugin, so SLURM_CONF cannot
# carry the path and the client tools must find the config at their compiled-in default.
#
# The node has 2 CPUs and 2 fake GPUs (GRES backed by device files that are /dev/null under another name),
# so GPU requests (--gpus, --cpus-per-gpu) are scheduled like on a GPU node; nothing can compute on them.
#
# No accounting daemon: the Snakemake profiles used against this cluster set `slurm-status-command: squeue`,
# which needs MinJobAge >= 3 x init-seconds-before-status-checks (the plugin falls back to sacct otherwise).
set -euo pipefail

STATE_DIR="${DSRL_SLURM_DIR:-/tmp/dsrl-slurm}"
CTLD_PORT="${DSRL_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${DSRL_SLURM_SLURMD_PORT:-6818}"
START_TIMEOUT_S="${DSRL_SLURM_START_TIMEOUT:-60}"
ETC_DIR=/etc/slurm
CONF="$STATE_DIR/slurm.conf"
GRES_CONF="$STATE_DIR/gres.conf"
FAKE_GPUS=2
MUNGE_DIR="$STATE_DIR/munge"
NODE="$(hostname -s)"

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

pid_alive() {
    local pidfile="$1"
    [[ -s "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

install() {
    local missing=()
    for tool in slurmctld slurmd sinfo sbatch squeue srun munged mungekey; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]} == 0)); then
        echo "slurm and munge already installed"
        return
    fi
    [[ $EUID -eq 0 ]] || die "missing ${missing[*]}; installing needs root (apt-get)"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm slurmctld slurmd slurm-client munge
}

real_memory_mb() {
    # Leave 10 % of the machine to everything that is not a SLURM job.
    free -m | awk '/^Mem:/ {print int($2 * 0.9)}'
}

link_into_etc() {
    local target="$1" link
    link="$ETC_DIR/$(basename "$target")"
    [[ -L "$link" && "$(readlink "$link")" == "$target" ]] && return
    [[ -e "$link" || -L "$link" ]] \
        && die "$link exists and is not this test cluster's link to $target; refusing to replace it"
    mkdir -p "$ETC_DIR"
    ln -s "$target" "$link"
}

unlink_from_etc() {
    local target="$1" link
    link="$ETC_DIR/$(basename "$target")"
    if [[ -L "$link" && "$(readlink "$link")" == "$target" ]]; then
        rm -f "$link"
    fi
}

write_gres_config() {
    for ((i = 0; i < FAKE_GPUS; i++)); do
        # slurmd takes only device files as GPUs: char 1:3 is /dev/null.
        [[ -c "$STATE_DIR/gpu$i" ]] || mknod "$STATE_DIR/gpu$i" c 1 3
    done
    echo "NodeName=$NODE Name=gpu File=$STATE_DIR/gpu[0-$((FAKE_GPUS - 1))]" >"$GRES_CONF.tmp-$$"
    mv "$GRES_CONF.tmp-$$" "$GRES_CONF"
}

write_config() {
    mkdir -p "$STATE_DIR"/{state,spool,log,run}
    write_gres_config
    cat >"$CONF.tmp-$$" <<EOF
# Written by tests/slurm/cluster.sh for a single test node; regenerated on every start.
ClusterName=dsrl-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_DIR/munge.socket.2
CredType=cred/munge
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid
SlurmdPidFile=$STATE_DIR/run/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=1024
GresTypes=gpu
# Finished jobs stay visible to squeue for an hour (Snakemake polls job states with squeue).
MinJobAge=3600
ReturnToService=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=2 RealMemory=$(real_memory_mb) Gres=gpu:$FAKE_GPUS State=UNKNOWN
# Named like the slurm profile's default partition, so tests submit with the profile's value.
PartitionName=gpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp-$$" "$CONF"
    link_into_etc "$CONF"
    link_into_etc "$GRES_CONF"
}

start_munge() {
    pid_alive "$MUNGE_DIR/munged.pid" && return
    mkdir -p "$MUNGE_DIR"
    chmod 0700 "$MUNGE_DIR"
    [[ -s "$MUNGE_DIR/munge.key" ]] || mungekey --create --keyfile="$MUNGE_DIR/munge.key"
    chmod 0400 "$MUNGE_DIR/munge.key"
    # --force: munged refuses to run as root otherwise. Relative paths (munged makes them absolute) keep
    # the state dir out of the daemons' command lines, see start().
    (cd "$MUNGE_DIR" && munged --force --socket=munge.socket.2 --key-file=munge.key \
        --pid-file=munged.pid --log-file=munged.log --seed-file=munged.seed)
}

wait_for_idle_node() {
    local deadline=$((SECONDS + START_TIMEOUT_S)) state=""
    while ((SECONDS < deadline)); do
        state="$(sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null || true)"
        [[ "$state" == idle ]] && return
        sleep 1
    done
    echo "--- slurmctld.log" >&2
    tail -n 20 "$STATE_DIR/log/slurmctld.log" >&2 || true
    echo "--- slurmd.log" >&2
    tail -n 20 "$STATE_DIR/log/slurmd.log" >&2 || true
    die "node $NODE not idle after ${START_TIMEOUT_S}s (state: '${state:-no answer}'); logs in $STATE_DIR/log"
}

start() {
    for tool in slurmctld slurmd sinfo munged mungekey; do
        command -v "$tool" >/dev/null || die "$tool not found; run '$0 install' first"
    done
    [[ $EUID -eq 0 ]] || die "starting the daemons needs root (they run as SlurmUser=root)"
    if pid_alive "$STATE_DIR/run/slurmctld.pid" && pid_alive "$STATE_DIR/run/slurmd.pid"; then
        wait_for_idle_node
        echo "cluster already running (node $NODE idle)"
        return
    fi
    write_config
    start_munge
    # The daemons find the config through the /etc/slurm link, not -f: with no state path (/tmp/dsrl-...) on
    # their command lines, a `pkill -f dsrl` aimed at stray trainers cannot take the cluster down mid-test.
    # -c: start from empty state, so an earlier session's jobs never leak into this one.
    pid_alive "$STATE_DIR/run/slurmctld.pid" || slurmctld -c
    pid_alive "$STATE_DIR/run/slurmd.pid" || slurmd -N "$NODE"
    wait_for_idle_node
    echo "cluster running: node $NODE idle, state in $STATE_DIR"
}

stop_daemon() {
    local name="$1" pidfile="$2" pid
    pid_alive "$pidfile" || return 0
    pid="$(cat "$pidfile")"
    kill "$pid"
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    echo "cluster.sh: $name (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    if pid_alive "$STATE_DIR/run/slurmctld.pid"; then
        # Cancel and drain jobs first: slurmstepd processes would outlive slurmd otherwise.
        squeue --noheader --format=%i | xargs -r scancel --quiet || true
        for _ in $(seq 30); do
            [[ -z "$(squeue --noheader --states=PENDING,RUNNING,COMPLETING --format=%i)" ]] && break
            sleep 1
        done
    fi
    stop_daemon slurmd "$STATE_DIR/run/slurmd.pid"
    stop_daemon slurmctld "$STATE_DIR/run/slurmctld.pid"
    stop_daemon munged "$MUNGE_DIR/munged.pid"
    unlink_from_etc "$CONF"
    unlink_from_etc "$GRES_CONF"
    echo "cluster stopped"
}

status() {
    local rc=0
    for entry in "munged:$MUNGE_DIR/munged.pid" "slurmctld:$STATE_DIR/run/slurmctld.pid" \
        "slurmd:$STATE_DIR/run/slurmd.pid"; do
        if pid_alive "${entry#*:}"; then
            echo "${entry%%:*}: running (pid $(cat "${entry#*:}"))"
        else
            echo "${entry%%:*}: stopped"
            rc=3
        fi
    done
    ((rc == 0)) && sinfo --nodes="$NODE" --Node --format="%N %P %T %C %G"
    return "$rc"
}

case "${1:-}" in
install | start | stop | status) "$1" ;;
*) die "usage: $0 {install|start|stop|status} (got '${1:-}')" ;;
esac
