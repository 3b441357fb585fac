# shellcheck shell=bash
# Shared by up.sh and down.sh (sourced, not run). Bash only.
#
# Every daemon up.sh starts is recorded in $PIDS/<name>.pid as "PID STARTTIME", where STARTTIME
# is field 22 of /proc/PID/stat (clock ticks since boot). A pid is only ever treated as "ours"
# if it is alive, has that same start time (so a recycled pid never matches) and runs the
# expected program. Nothing here kills processes by name.

STATE=${SAMBENCH_SLURM_STATE:-/tmp/sambench-slurm}
PIDS=$STATE/pids
LOGS=$STATE/log
# Start order; down.sh stops them in reverse.
# shellcheck disable=SC2034  # used by the scripts that source this file
DAEMONS=(munged mysqld slurmdbd slurmctld slurmd)

# Which executable names may legitimately sit behind a recorded daemon pid (Debian installs
# slurmctld/slurmd as alternatives pointing at slurmctld-wlm/slurmd-wlm, mysqld at mariadbd).
expected_exe() {
  case $1 in
    mysqld) echo "mariadbd mysqld" ;;
    *) echo "$1 $1-wlm" ;;
  esac
}

# Start time of a process, or nothing if it is gone. The comm field (2) may contain spaces, so
# cut everything up to the last ')' before counting fields.
proc_starttime() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  # After the cut, field 1 is "state" (field 3 of the full line): starttime (22) is field 20.
  awk '{print $20}' <<<"$stat"
}

record_pid() { # name pid
  mkdir -p "$PIDS"
  echo "$2 $(proc_starttime "$2")" >"$PIDS/$1.pid"
}

# Prints the pid of daemon $1 if the recorded process is still the one we started; else fails.
ours_alive() {
  local name=$1 file=$PIDS/$1.pid pid start exe ok=1 e
  [[ -r $file ]] || return 1
  read -r pid start <"$file" || return 1
  [[ $pid =~ ^[0-9]+$ && -n $start ]] || return 1
  [[ "$(proc_starttime "$pid")" == "$start" ]] || return 1
  # readlink may say "/usr/sbin/slurmd (deleted)" after a package upgrade: compare the basename.
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe=${exe##*/}
  exe=${exe%% (deleted)}
  for e in $(expected_exe "$name"); do [[ $exe == "$e" ]] && ok=0; done
  ((ok == 0)) || return 1
  echo "$pid"
}

log_tail() { # prints the last lines of every log in the state dir, for failure reports
  local f
  for f in "$LOGS"/*; do
    [[ -f $f ]] || continue
    echo "----- tail $f" >&2
    tail -n 25 "$f" >&2 || true
  done
}
