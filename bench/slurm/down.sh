#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by bench/slurm/up.sh.
#
# Only the processes up.sh recorded in $SAMBENCH_SLURM_STATE/pids (default /tmp/sambench-slurm)
# are stopped, and only while they are still the very processes it started (same pid, same start
# time, same executable). Idempotent: with nothing running it just removes stale pid files.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$HERE/common.sh"

# Jobs outlive slurmd (each runs under its own slurmstepd), so cancel them while the controller
# still answers; KillWait=5 bounds how long a job that ignores SIGTERM can linger.
if ours_alive slurmctld >/dev/null && ours_alive slurmd >/dev/null \
  && timeout 5 scontrol ping >/dev/null 2>&1; then
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
  if [[ -n $jobs ]]; then
    # shellcheck disable=SC2086
    timeout 10 scancel $jobs 2>/dev/null || true
    for _ in $(seq 30); do
      [[ -z $(timeout 10 squeue -h -o %A 2>/dev/null || true) ]] && break
      sleep 0.5
    done
  fi
fi

stopped=()
for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
  name=${DAEMONS[i]}
  if pid=$(ours_alive "$name"); then
    kill -TERM "$pid" 2>/dev/null || true
    # mysqld needs a few seconds for a clean InnoDB shutdown; the rest stop at once.
    for _ in $(seq 100); do
      ours_alive "$name" >/dev/null || break
      sleep 0.2
    done
    if ours_alive "$name" >/dev/null; then
      echo "down.sh: $name ($pid) ignored SIGTERM for 20 s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 50); do
        ours_alive "$name" >/dev/null || break
        sleep 0.1
      done
    fi
    if ours_alive "$name" >/dev/null; then
      echo "down.sh: could not stop $name ($pid)" >&2
      exit 1
    fi
    stopped+=("$name")
  fi
  rm -f "$PIDS/$name.pid"
done

if ((${#stopped[@]})); then
  echo "slurm down: stopped ${stopped[*]}"
else
  echo "slurm down: nothing was running"
fi
