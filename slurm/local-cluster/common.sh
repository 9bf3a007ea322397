# Shared paths and helpers for start.sh / stop.sh. Sourced, never executed.
# shellcheck disable=SC2034  # the variables are used by the scripts that source this file
# Everything the cluster owns lives under one state dir: nothing is written to /etc, and
# `rm -rf` of that dir (after stop.sh) is a full reset. Ports 6817-6819 are SLURM's defaults,
# so it is still one cluster per machine.

PIXBENCH_SLURM_STATE="${PIXBENCH_SLURM_STATE:-/tmp/pixbench-slurm}"
STATE="$PIXBENCH_SLURM_STATE"
ETC="$STATE/etc"
RUN="$STATE/run"
LOG="$STATE/log"
SPOOL="$STATE/spool"
MUNGE_DIR="$STATE/munge"
MUNGE_KEY="$MUNGE_DIR/munge.key"
MUNGE_SOCK="$MUNGE_DIR/munge.socket.2"
DB_DATA="$STATE/mysql"
DB_SOCK="$RUN/mysqld.sock"
PARTITION="debug"

# Start order; stop.sh walks it backwards.
DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"

pidfile() { echo "$RUN/$1.pid"; }

# A process reparented to PID 1 on this machine is reaped lazily, so a dead daemon can linger
# as a zombie: state Z counts as dead, otherwise kill -0 would report it alive forever.
pid_alive() {
    [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
    # Field 3 of /proc/PID/stat is the state; the comm field (2) may contain spaces, so cut
    # everything up to the last ')'.
    local st
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != "Z" ] && [ "$st" != "X" ]
}

daemon_pid() {
    local f
    f=$(pidfile "$1")
    [ -s "$f" ] && tr -dc '0-9' <"$f"
}

# Also check the process name, so a stale pid file whose PID got reused by an unrelated
# process is never mistaken for (or killed as) our daemon.
daemon_alive() {
    local pid
    pid="$(daemon_pid "$1")" || return 1
    pid_alive "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
