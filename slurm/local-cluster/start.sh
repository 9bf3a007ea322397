#!/usr/bin/env bash
# Start a real single-node SLURM cluster (munge + MariaDB + slurmdbd + slurmctld + slurmd) on
# loopback, for tests and CI. Idempotent: a healthy cluster is left alone, a partial one is
# completed. All state lives in $PIXBENCH_SLURM_STATE (default /tmp/pixbench-slurm).
# Facts behind the settings: /work/shared/notes/slurm-local-cluster.md (measured on Debian 12).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/common.sh
. "$HERE/common.sh"

TIMEOUT="${PIXBENCH_SLURM_TIMEOUT:-60}"   # seconds per wait step
PACKAGES="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"

die() {
    echo "start.sh: ERROR: $*" >&2
    exit 1
}
log() { echo "start.sh: $*" >&2; }

# Daemons must run as root (slurmd switches to the job's user). CI runners usually have
# passwordless sudo, so re-exec instead of failing there.
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        exec sudo -n env PIXBENCH_SLURM_STATE="$STATE" PIXBENCH_SLURM_TIMEOUT="$TIMEOUT" \
            bash "$0" "$@"
    fi
    die "must run as root (or with passwordless sudo)"
fi

export SLURM_CONF="$ETC/slurm.conf"

# Serialise concurrent start/stop calls (e.g. several pytest workers each making sure the
# cluster is up). Every daemon is started with 9>&- so none of them inherits the lock.
mkdir -p "$STATE"
exec 9>"$STATE/lock"
flock -w $((TIMEOUT * 3)) 9 || { echo "start.sh: ERROR: $STATE/lock held too long" >&2; exit 1; }

ready_line() {
    echo "SLURM cluster ready: partition=$PARTITION; export SLURM_CONF=$SLURM_CONF" \
        "(or: . $HERE/env.sh)"
}

# Point the user at the log that explains a failure instead of just "timed out".
show_log() {
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "---- last lines of $f ----" >&2
        tail -n 15 "$f" >&2
    done
}

# wait_for DAEMON DESCRIPTION LOGFILE... -- COMMAND...: poll COMMAND until it succeeds.
# A deadline (not a retry count) so slow commands can't stretch the wait; and a daemon that
# wrote its pid file and then died (bad config, port in use) fails at once, not at the deadline.
wait_for() {
    local daemon="$1" what="$2"
    shift 2
    local logs=()
    while [ "$1" != "--" ]; do
        logs+=("$1")
        shift
    done
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if [ -s "$(pidfile "$daemon")" ] && ! daemon_alive "$daemon"; then
            show_log "${logs[@]}"
            die "$daemon exited during startup (state dir: $STATE)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log "${logs[@]}"
            die "timed out after ${TIMEOUT}s waiting for $what (state dir: $STATE)"
        fi
        sleep 0.2
    done
}

# needs_start NAME: true if NAME is not running. Its stale pid file is removed so that
# wait_for can tell "exited" from "pid file not written yet".
needs_start() {
    daemon_alive "$1" && return 1
    rm -f "$(pidfile "$1")"
    log "starting $1"
}

# --------------------------------------------------------------------------------- health
ctld_up() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
dbd_up() { sacctmgr -n show cluster >/dev/null 2>&1; }
# idle/mix/alloc/comp all mean "usable"; a trailing * (not responding), drain or down does not.
node_ready() { sinfo -h -o %t 2>/dev/null | grep -Eqx 'idle|mix|alloc|comp'; }

healthy() {
    local d
    for d in $DAEMONS; do daemon_alive "$d" || return 1; done
    ctld_up && node_ready && dbd_up
}

if command -v sinfo >/dev/null && [ -r "$SLURM_CONF" ] && healthy; then
    ready_line
    exit 0
fi

# ------------------------------------------------------------------------------- packages
install_packages() {
    local missing="" p
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
            missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    log "installing:$missing"
    # Without systemd, maintainer scripts would try to start the system munge/mariadb through
    # init.d; a policy-rc.d that says "no" keeps them off (Docker-style images already have
    # one; only add ours if none exists, and remove it afterwards).
    local added_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Try without `apt-get update` first (fast when the lists are fresh); update once if the
    # install fails (no lists in a fresh image, or stale ones pointing at removed versions).
    local ok=1
    # shellcheck disable=SC2086
    if ! apt-get install -y -qq --no-install-recommends $missing >"$LOG/apt.log" 2>&1; then
        log "apt-get install failed; running apt-get update once and retrying"
        ok=""
        # shellcheck disable=SC2086
        if apt-get update -qq >>"$LOG/apt.log" 2>&1 &&
            apt-get install -y -qq --no-install-recommends $missing >>"$LOG/apt.log" 2>&1; then
            ok=1
        fi
    fi
    if [ -n "$added_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ -z "$ok" ]; then
        show_log "$LOG/apt.log"
        die "could not install:$missing"
    fi
}

mkdir -p "$ETC" "$RUN" "$LOG" "$SPOOL/ctld" "$SPOOL/d" "$MUNGE_DIR"
# munged refuses a socket dir that is writable by others or not searchable by all (clients of
# any user must reach the socket): 0755. The key itself is 0400.
chmod 755 "$STATE" "$ETC" "$RUN" "$LOG" "$SPOOL" "$MUNGE_DIR"
install_packages

# Unix socket paths are limited to 107 bytes; fail clearly rather than with a bind() error.
for s in "$MUNGE_SOCK" "$DB_SOCK"; do
    [ "${#s}" -lt 100 ] || die "socket path too long ($s); use a shorter PIXBENCH_SLURM_STATE"
done

# --------------------------------------------------------------------------------- config
NODE="$(hostname -s)"
# With NoInAddrAny, daemons and srun bind to the address that gethostname() resolves to, so
# every address in the configs must be that one. It is 127.0.0.1 here, but Debian's default
# /etc/hosts maps the hostname to 127.0.1.1, and CI VMs often to a LAN address.
ADDR="$(getent ahostsv4 "$(hostname)" | awk 'NR == 1 { print $1 }')"
case "$ADDR" in
127.*) ;;
*) die "hostname '$(hostname)' resolves to '${ADDR:-nothing}', not loopback; daemons would" \
    "listen there. Add '127.0.0.1 $(hostname) $NODE' to /etc/hosts (CI) and retry." ;;
esac
# RealMemory above what slurmd detects drains the node ("Low RealMemory"): use its own number.
REAL_MEM="$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
[ -n "$REAL_MEM" ] || die "could not read RealMemory from 'slurmd -C'"

# Written to a temp file and moved only when different, so a running cluster's config mtime
# doesn't change needlessly.
write_if_changed() {
    local dest="$1" mode="$2" tmp
    tmp="$(mktemp "$dest.XXXXXX")"
    cat >"$tmp"
    chmod "$mode" "$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$dest"
    fi
}

write_if_changed "$ETC/slurm.conf" 644 <<EOF
# Generated by slurm/local-cluster/start.sh; edits are overwritten.
ClusterName=pixbench
SlurmctldHost=$NODE($ADDR)
# Loopback only: without these, daemons and srun listen on 0.0.0.0.
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
# Private munged (socket in the state dir). cred_expire is also the hold time of a requeued
# job (default 120 s); it needs a daemon restart to change, not scontrol reconfigure.
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# No usable cgroup controller on these machines: plain /proc tracking, no task plugin.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
MpiDefault=none
MailProg=/bin/true
KillWait=5
ReturnToService=2
# Defaults made a requeued job wait ~131 s before it ran again.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# Advertise more CPUs than cores so small job arrays run concurrently.
SlurmdParameters=config_overrides
# Accounting is what lets submitit see CANCELLED/TIMEOUT jobs (no result pickle) via sacct.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$ADDR
# Connections to slurmdbd ignore AuthInfo's socket and take the munge socket from here (the
# "alternate munge daemon" mechanism); without it they try /run/munge/munge.socket.2.
AccountingStoragePass=$MUNGE_SOCK
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=$ADDR CPUs=4 RealMemory=$REAL_MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

# slurmdbd finds slurmdbd.conf next to $SLURM_CONF; it holds DB credentials, hence 0600.
write_if_changed "$ETC/slurmdbd.conf" 600 <<EOF
# Generated by slurm/local-cluster/start.sh; edits are overwritten.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$NODE
DbdAddr=$ADDR
# DbdAddr is only what clients dial; without this slurmdbd listens on 0.0.0.0. (Undocumented
# for slurmdbd.conf in 22.05, but honoured: it binds to the address of the hostname.)
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF

# ---------------------------------------------------------------------------------- munge
if [ ! -s "$MUNGE_KEY" ]; then
    log "generating munge key"
    dd if=/dev/urandom of="$MUNGE_KEY.tmp" bs=1024 count=1 status=none
    chmod 400 "$MUNGE_KEY.tmp"
    mv -f "$MUNGE_KEY.tmp" "$MUNGE_KEY"
fi

# Daemons are started with setsid and stdio on files/dev/null: a daemon holding the caller's
# stdout would keep a CI step (or `$(start.sh)`) from ever seeing EOF.
if needs_start munged; then
    setsid munged --key-file="$MUNGE_KEY" --socket="$MUNGE_SOCK" \
        --pid-file="$(pidfile munged)" --log-file="$LOG/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed" \
        </dev/null 9>&- >>"$LOG/munged.stderr" 2>&1 ||
        { show_log "$LOG/munged.stderr" "$LOG/munged.log"; die "munged failed to start"; }
fi
# munged daemonizes after creating the socket, but be explicit: slurm needs it answering.
wait_for munged "munged" "$LOG/munged.log" -- \
    sh -c "munge -n -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'"

# -------------------------------------------------------------------------------- MariaDB
# --no-defaults: ignore /etc/mysql (system socket, datadir); everything is on the command line.
MARIADB_OPTS="--no-defaults --datadir=$DB_DATA --socket=$DB_SOCK --skip-networking --user=root"
if [ ! -d "$DB_DATA/mysql" ]; then
    log "initialising MariaDB datadir"
    rm -rf "$DB_DATA"
    # Socket auth: unix root connects as DB root without a password, so no secret to manage.
    # shellcheck disable=SC2086
    mariadb-install-db $MARIADB_OPTS --auth-root-authentication-method=socket \
        --skip-test-db >"$LOG/mariadb-install.log" 2>&1 ||
        { show_log "$LOG/mariadb-install.log"; die "mariadb-install-db failed"; }
fi
if needs_start mariadbd; then
    # mariadbd doesn't daemonize itself; setsid + & detaches it from our session.
    # Small buffer pool: the accounting DB is tiny and the machine runs benchmarks (slurmdbd
    # logs a harmless "settings not recommended" for it). Lock timeout is slurmdbd's advice.
    # shellcheck disable=SC2086
    setsid mariadbd $MARIADB_OPTS --pid-file="$(pidfile mariadbd)" \
        --log-error="$LOG/mariadbd.log" --innodb-buffer-pool-size=32M \
        --innodb-lock-wait-timeout=900 </dev/null 9>&- >/dev/null 2>&1 &
fi
wait_for mariadbd "mariadbd" "$LOG/mariadbd.log" -- \
    mariadb-admin --no-defaults --socket="$DB_SOCK" -uroot ping

# ------------------------------------------------------------------------------- slurmdbd
if needs_start slurmdbd; then
    # slurmdbd has no setting for the MySQL socket; libmariadb reads MYSQL_UNIX_PORT.
    MYSQL_UNIX_PORT="$DB_SOCK" setsid slurmdbd \
        </dev/null 9>&- >>"$LOG/slurmdbd.stderr" 2>&1 ||
        { show_log "$LOG/slurmdbd.stderr" "$LOG/slurmdbd.log"; die "slurmdbd failed to start"; }
fi
wait_for slurmdbd "slurmdbd (sacctmgr show cluster)" \
    "$LOG/slurmdbd.stderr" "$LOG/slurmdbd.log" -- dbd_up

# ------------------------------------------------------------------------------ slurmctld
if needs_start slurmctld; then
    setsid slurmctld -f "$SLURM_CONF" </dev/null 9>&- >>"$LOG/slurmctld.stderr" 2>&1 ||
        { show_log "$LOG/slurmctld.stderr" "$LOG/slurmctld.log"; die "slurmctld failed to start"; }
fi
wait_for slurmctld "slurmctld (scontrol ping)" \
    "$LOG/slurmctld.stderr" "$LOG/slurmctld.log" -- ctld_up

# --------------------------------------------------------------------------------- slurmd
if needs_start slurmd; then
    setsid slurmd -f "$SLURM_CONF" </dev/null 9>&- >>"$LOG/slurmd.stderr" 2>&1 ||
        { show_log "$LOG/slurmd.stderr" "$LOG/slurmd.log"; die "slurmd failed to start"; }
fi
wait_for slurmd "node $NODE to become idle (sinfo)" "$LOG/slurmd.stderr" "$LOG/slurmd.log" \
    "$LOG/slurmctld.log" -- node_ready

healthy || die "daemons started but the cluster is not healthy; see $LOG"
ready_line
