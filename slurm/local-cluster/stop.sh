#!/usr/bin/env bash
# Stop the local SLURM cluster started by start.sh. Idempotent; leaves the state dir (configs,
# munge key, accounting DB, job IDs) in place so the next start.sh is fast. `rm -rf` the state
# dir after stopping for a full reset.
# Daemons are stopped by the PIDs in their pid files, never by name: another cluster, a
# system slurmd or a second checkout's daemons on this machine must survive.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/common.sh
. "$HERE/common.sh"

if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        exec sudo -n env PIXBENCH_SLURM_STATE="$STATE" bash "$0" "$@"
    fi
    echo "stop.sh: ERROR: must run as root (or with passwordless sudo)" >&2
    exit 1
fi

[ -d "$RUN" ] || { echo "stop.sh: nothing to stop (no $RUN)"; exit 0; }
export SLURM_CONF="$ETC/slurm.conf"

# Same lock as start.sh: a stop must not interleave with a start.
exec 9>"$STATE/lock"
flock -w 180 9 || { echo "stop.sh: ERROR: $STATE/lock held too long" >&2; exit 1; }

# Running jobs' slurmstepd processes outlive slurmd; cancel them while slurmctld can still do
# it, so stopping the cluster leaves no job processes behind.
if daemon_alive slurmctld && daemon_alive slurmd && command -v squeue >/dev/null; then
    jobs="$(squeue -h -o %A 2>/dev/null || true)"
    if [ -n "$jobs" ]; then
        echo "stop.sh: cancelling jobs: $(echo "$jobs" | tr '\n' ' ')" >&2
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        deadline=$((SECONDS + 20))
        while [ -n "$(squeue -h -o %A 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.5
        done
    fi
fi

stop_daemon() {
    local name="$1" pid
    pid="$(daemon_pid "$name" || true)"
    if ! daemon_alive "$name"; then
        rm -f "$(pidfile "$name")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    # Generous but bounded: slurmctld saves state and mariadbd flushes InnoDB on TERM.
    local deadline=$((SECONDS + 20))
    while pid_alive "$pid"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "stop.sh: $name ($pid) ignored SIGTERM for 20s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.1
    done
    rm -f "$(pidfile "$name")"
    echo "stop.sh: stopped $name ($pid)" >&2
}

# Reverse start order: clients of a service go before the service.
for d in slurmd slurmctld slurmdbd mariadbd munged; do
    stop_daemon "$d"
done
echo "stop.sh: cluster stopped (state kept in $STATE)"
