#!/usr/bin/env bash
# A real, single-node SLURM cluster with accounting, started by hand (no
# systemd) in a directory of its own, for the cluster test (tests/workflow/test_slurm.py).
#
#   .ci/slurm_cluster.sh start DIR   install what is missing (apt-get, as root), write the
#                                    configs into DIR, start munged, mariadbd, slurmdbd,
#                                    slurmctld and slurmd; prints `export SLURM_CONF=DIR/slurm.conf`
#   .ci/slurm_cluster.sh stop DIR    stop every daemon that `start DIR` started (by the pids in DIR/pids)
#   .ci/slurm_cluster.sh check       exit 0 when this machine can run it (root, apt-get or the daemons)
#
# The node declares 4 CPUs, 8 GB and 2 fake GPUs (gres gpu:fake:2, whose
# "device files" are two empty files in DIR/dev); ProctrackType=proctrack/linuxproc, TaskPlugin=task/affinity,
# SelectType=select/cons_tres, DefMemPerCPU=500. Accounting goes to slurmdbd
# (MariaDB), so `sacct` answers: with accounting off, sacct returns nothing and
# snakemake's SLURM executor would wait forever. Ports are picked free at start.
set -euo pipefail

PACKAGES=(slurm-wlm slurmdbd slurm-client munge mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
MUNGE_SOCKET=/run/munge/munge.socket.2

say() { printf '==> slurm_cluster: %s\n' "$*" >&2; }
die() { printf 'slurm_cluster: error: %s\n' "$*" >&2; exit 1; }

have_daemons() {
    local d
    for d in "${DAEMONS[@]}" mariadb-install-db sbatch sacct sacctmgr; do
        command -v "$d" >/dev/null 2>&1 || [ -x "/usr/sbin/$d" ] || return 1
    done
}

check() {
    [ "$(id -u)" = 0 ] || { echo "needs root (slurmd, munged)"; return 1; }
    have_daemons || command -v apt-get >/dev/null 2>&1 || { echo "needs apt-get or ${PACKAGES[*]}"; return 1; }
}

install_missing() {
    export PATH="/usr/sbin:/sbin:$PATH"
    have_daemons && return 0
    say "installing ${PACKAGES[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" >&2
    have_daemons || die "apt-get installed ${PACKAGES[*]} but the daemons are still missing"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for SECONDS WHAT COMMAND...: run COMMAND until it succeeds
wait_for() {
    local seconds="$1" what="$2" i
    shift 2
    for ((i = 0; i < seconds * 4; i++)); do
        timeout 10 "$@" >/dev/null 2>&1 && return 0
        sleep 0.25
    done
    die "$what did not come up within ${seconds}s (logs in $DIR/log)"
}

# start_daemon NAME COMMAND...: run COMMAND in the background, remember its pid
start_daemon() {
    local name="$1"
    shift
    "$@" >>"$DIR/log/$name.out" 2>&1 &
    echo "$name $!" >>"$DIR/pids"
}

write_configs() {
    local host cpus=4 mem=8000
    host="$(hostname -s)"
    local ctld_port dbd_port slurmd_port db_port
    ctld_port="$(free_port)"; dbd_port="$(free_port)"; slurmd_port="$(free_port)"; db_port="$(free_port)"
    echo "$db_port" >"$DIR/db_port"
    echo "$host:$ctld_port" >"$DIR/conf_server"
    cat >"$DIR/slurm.conf" <<EOF
ClusterName=negatives-ci
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
GresTypes=gpu
SlurmdParameters=config_overrides
SlurmctldParameters=enable_configless
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
LaunchParameters=use_interactive_step
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$dbd_port
AccountingStoreFlags=job_comment
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
InactiveLimit=0
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:fake:2 State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
    mkdir -p "$DIR/dev" && touch "$DIR/dev/fakegpu0" "$DIR/dev/fakegpu1"  # plain files: nothing opens them
    cat >"$DIR/gres.conf" <<EOF
NodeName=$host Name=gpu Type=fake File=$DIR/dev/fakegpu[0-1]
EOF
    cat >"$DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=$dbd_port
SlurmUser=root
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=ci-only
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$DIR/slurmdbd.conf"
}

start_mariadb() {
    local port
    port="$(cat "$DIR/db_port")"
    mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root --auth-root-authentication-method=socket \
        >"$DIR/log/mariadb-install.out" 2>&1 || die "mariadb-install-db failed (see $DIR/log/mariadb-install.out)"
    start_daemon mariadbd mariadbd --no-defaults --datadir="$DIR/mysql" --socket="$DIR/mysql.sock" --user=root \
        --port="$port" --bind-address=127.0.0.1 --pid-file="$DIR/mariadb.pid" --skip-log-bin \
        --innodb-buffer-pool-size=32M --innodb-log-file-size=8M
    wait_for 60 mariadbd mariadb --no-defaults --socket="$DIR/mysql.sock" -u root -e 'SELECT 1'
    mariadb --no-defaults --socket="$DIR/mysql.sock" -u root -e \
        "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'ci-only';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
         CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'ci-only';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

# munge at its default socket (the SLURM clients talk to that one): reuse a
# munged that already answers there, else start one with a key of our own
start_munged() {
    if timeout 10 munge -n >/dev/null 2>&1; then
        say "reusing the munged that answers at $MUNGE_SOCKET"
        return 0
    fi
    [ -e "$MUNGE_SOCKET" ] && die "$MUNGE_SOCKET exists but munge -n fails: stop that munged or remove the stale socket"
    mkdir -p "$(dirname "$MUNGE_SOCKET")"
    dd if=/dev/urandom of="$DIR/munge.key" bs=1 count=1024 status=none
    chmod 600 "$DIR/munge.key"
    start_daemon munged munged --foreground --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge.key" \
        --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge.seed"
    wait_for 30 munged munge -n
}

start() {
    DIR="$(mkdir -p "$1" && cd "$1" && pwd)"
    check >/dev/null || die "$(check || true)"
    install_missing
    mkdir -p "$DIR/log" "$DIR/state" "$DIR/spool"
    : >"$DIR/pids"
    write_configs
    export SLURM_CONF="$DIR/slurm.conf"

    start_munged

    start_mariadb
    start_daemon slurmdbd slurmdbd -D
    wait_for 60 slurmdbd sacctmgr -i show cluster
    sacctmgr -i add cluster negatives-ci >/dev/null 2>&1 || true
    sacctmgr -i add account negatives Description=ci Organization=ci >/dev/null
    sacctmgr -i add user root Account=negatives DefaultAccount=negatives >/dev/null
    start_daemon slurmctld slurmctld -D -i
    wait_for 60 slurmctld scontrol ping
    # configless: slurmd fetches the config from slurmctld and publishes it at
    # /run/slurm/conf, where the job's own srun finds it (snakemake's job step
    # drops SLURM_CONF from the environment of the srun it calls)
    [ -e /run/slurm/conf ] && [ ! -L /run/slurm/conf ] && die "/run/slurm/conf exists and is not slurmd's link: a SLURM node is already set up here"
    start_daemon slurmd slurmd -D --conf-server "$(cat "$DIR/conf_server")"
    wait_for 60 "the node (idle)" sh -c 'sinfo -h -o %t | grep -qx idle'
    say "up: $(sinfo -h -o '%P %D %t %G' | tr '\n' ';') accounting: slurmdbd"
    echo "export SLURM_CONF=$DIR/slurm.conf"
}

stop() {
    DIR="$1"
    [ -f "$DIR/pids" ] || return 0
    local name pid i
    # in reverse order of start: slurmd first, munged last
    while read -r name pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 80; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
            kill -0 "$pid" 2>/dev/null && { say "$name ($pid) ignored SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; }
        fi
    done < <(tac "$DIR/pids")
    rm -f "$DIR/pids"
    # the configless link our slurmd made
    if [ -L /run/slurm/conf ] && [[ "$(readlink /run/slurm/conf)" == "$DIR/"* ]]; then
        rm -f /run/slurm/conf
    fi
}

case "${1:-}" in
    start) start "${2:?start DIR}" ;;
    stop) stop "${2:?stop DIR}" ;;
    check) check ;;
    *) die "usage: $0 start DIR | stop DIR | check" ;;
esac
