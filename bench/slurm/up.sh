#!/usr/bin/env bash
# Start a real single-node SLURM cluster (munged, MariaDB, slurmdbd, slurmctld, slurmd) on this
# machine, for tests and CI. Needs root and Debian/Ubuntu apt; works without systemd.
#
#   bench/slurm/up.sh     # install packages if missing, start everything, wait until usable
#   bench/slurm/down.sh   # stop what up.sh started
#
# State, logs and pid files live in $SAMBENCH_SLURM_STATE (default /tmp/sambench-slurm). The
# Slurm configs are written to /etc/slurm/ so plain sbatch/squeue/sacct/scancel (and submitit)
# find them. Idempotent: if the cluster is already up and healthy it says so and exits 0;
# if it is half up (or left over from a dead session) it is stopped and started afresh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$HERE/common.sh"

CLUSTER=sambench
HOST=$(uname -n)
HOST=${HOST%%.*}
SLURM_CONF=/etc/slurm/slurm.conf
SLURMDBD_CONF=/etc/slurm/slurmdbd.conf
MARKER="# sambench-state=$STATE"
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_DIR=$STATE/mysql
DB_RUN=$STATE/run/mysql # socket and pid file, writable by the mysql user
DB_SOCK=$DB_RUN/mysqld.sock
WAIT_S=${SAMBENCH_SLURM_WAIT_S:-60}
T0=$SECONDS

die() {
  echo "up.sh: $*" >&2
  log_tail
  exit 1
}

# wait_for DESCRIPTION DAEMON-OR-- COMMAND...: poll COMMAND for up to WAIT_S seconds; fail early
# (with the logs) if the daemon we are waiting on died meanwhile.
wait_for() {
  local what=$1 daemon=$2 deadline=$((SECONDS + WAIT_S))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [[ $daemon != - ]] && ! ours_alive "$daemon" >/dev/null; then
      die "$daemon exited while waiting for $what"
    fi
    ((SECONDS < deadline)) || die "timed out after ${WAIT_S}s waiting for $what"
    sleep 0.2
  done
}

# Start a daemon in the foreground of its own session, in the background of this script, with
# stdio away from our caller's pipes (so `subprocess.run(capture_output=True)` returns).
start_daemon() { # name command...
  local name=$1
  shift
  setsid "$@" </dev/null >>"$LOGS/$name.out" 2>&1 &
  record_pid "$name" $!
}

munge_ok() { munge -n </dev/null | unmunge >/dev/null; }
# (String matches rather than `| grep -q`: under pipefail an early grep exit can fail the pipe.)
ctld_up() { [[ $(scontrol ping 2>/dev/null) == *"is UP"* ]]; }
node_state() { sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1; }
node_ready() { [[ $(node_state) == idle ]]; }
dbd_ok() { sacctmgr -n -P list cluster format=cluster; }
has_cluster() { [[ $'\n'$(dbd_ok 2>/dev/null)$'\n' == *$'\n'"$CLUSTER"$'\n'* ]]; }

healthy() {
  local d
  [[ -f $SLURM_CONF ]] && grep -qxF "$MARKER" "$SLURM_CONF" || return 1
  for d in mysqld slurmdbd slurmctld slurmd; do ours_alive "$d" >/dev/null || return 1; done
  timeout 5 bash -c 'munge -n </dev/null | unmunge >/dev/null' || return 1
  [[ $(timeout 5 scontrol ping 2>/dev/null) == *"is UP"* ]] || return 1
  case $(timeout 5 sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1) in
    idle | mixed | allocated | completing) ;;
    *) return 1 ;;
  esac
  has_cluster
}

summary() {
  local cpus
  cpus=$(sinfo -h -N -n "$HOST" -o %c | head -n 1)
  echo "slurm up: node $HOST $(node_state), accounting on, $cpus CPUs ($1)"
}

[[ $(id -u) == 0 ]] || {
  echo "up.sh: must run as root (it installs packages and writes /etc/slurm)" >&2
  exit 1
}

if command -v scontrol >/dev/null && healthy 2>/dev/null; then
  summary "already up, state in $STATE"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# 1. Packages (only when something is missing, so a second run stays fast).
need=(munged munge unmunge slurmctld slurmd slurmdbd sbatch squeue sacct sacctmgr scancel
  scontrol sinfo mariadbd mariadb-install-db mariadb mariadb-admin setpriv)
missing=()
for b in "${need[@]}"; do command -v "$b" >/dev/null || missing+=("$b"); done
if ((${#missing[@]})); then
  echo "up.sh: installing Slurm/munge/MariaDB (missing: ${missing[*]})"
  # Package scripts must not start their own daemons (we start ours by hand, and without systemd
  # their init scripts would leave stray munged/mariadbd behind): Debian's policy-rc.d hook.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  ok=0
  apt-get update -q && apt-get install -y -q --no-install-recommends \
    munge slurmctld slurmd slurm-client slurmdbd mariadb-server mariadb-client && ok=1
  ((made_policy)) && rm -f "$policy"
  ((ok)) || die "apt-get install failed"
  hash -r
  for b in "${need[@]}"; do command -v "$b" >/dev/null || die "$b still missing after install"; done
fi

# ---------------------------------------------------------------------------------------------
# 2. Clean slate: stop whatever a previous up.sh left half running (only our recorded pids).
"$HERE/down.sh" >/dev/null
# Anything still listening on our ports now is not ours (e.g. a cluster started with another
# SAMBENCH_SLURM_STATE): say so instead of letting a daemon die on "address in use".
for port in 6817 6818 6819; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "up.sh: port $port on 127.0.0.1 is taken by a process up.sh did not start (with" \
      "SAMBENCH_SLURM_STATE=$STATE); stop it, or run down.sh with the state dir that started it" >&2
    exit 1
  fi
done
mkdir -p "$STATE" "$PIDS" "$LOGS" "$STATE/run"
chmod 755 "$STATE" "$STATE/run" # mysqld (as user mysql) must reach its datadir and socket
rm -rf "$STATE/ctld" "$STATE/slurmd"
mkdir -p "$STATE/ctld" "$STATE/slurmd"
# Fresh logs per start, so a failure report shows this run only.
rm -f "$LOGS"/*

# ---------------------------------------------------------------------------------------------
# 3. munge: key, runtime dir, daemon (as the munge user; munged refuses to run as root).
id munge >/dev/null 2>&1 || die "no munge user (is the munge package installed?)"
install -d -o munge -g munge -m 700 /etc/munge /var/lib/munge
install -d -o munge -g munge -m 755 /run/munge /var/log/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key
  else # munge < 0.5.15 has no mungekey; a key is just random bytes
    (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
  fi
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
if munge_ok 2>/dev/null; then
  # Some other munged (not ours) already serves the socket: use it rather than fight over it.
  echo "up.sh: using the munged that is already running"
else
  start_daemon munged setpriv --reuid=munge --regid=munge --init-groups munged -F --force
  wait_for "munged" munged munge_ok
fi

# ---------------------------------------------------------------------------------------------
# 4. MariaDB for accounting: own datadir, unix socket only, no networking.
id mysql >/dev/null 2>&1 || die "no mysql user (is mariadb-server installed?)"
if [[ ! -d $DB_DIR/mysql ]]; then
  rm -rf "$DB_DIR"
  install -d -o mysql -g mysql -m 750 "$DB_DIR"
  # root@localhost authenticates by unix socket (we are root), no password to manage.
  mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" \
    --auth-root-authentication-method=socket --skip-test-db >"$LOGS/mariadb-install-db.log" 2>&1 \
    || die "mariadb-install-db failed"
fi
chown -R mysql:mysql "$DB_DIR"
install -d -o mysql -g mysql -m 755 "$DB_RUN"
# Nothing of ours is running any more (down.sh above), so socket/lock files are stale.
rm -f "$DB_SOCK" "$DB_SOCK.lock"
# --no-defaults: ignore /etc/mysql/*.cnf (which point at the system datadir and socket).
# Its error log goes to stderr, i.e. $LOGS/mysqld.out (mysqld can't write root's log dir).
start_daemon mysqld "$(command -v mariadbd)" --no-defaults --user=mysql --datadir="$DB_DIR" \
  --socket="$DB_SOCK" --pid-file="$DB_RUN/mysqld.pid" --skip-networking \
  --innodb-lock-wait-timeout=900
wait_for "mysqld socket" mysqld mariadb-admin --no-defaults --socket="$DB_SOCK" ping

sql() { mariadb --no-defaults --socket="$DB_SOCK" -N -B -e "$1"; }
# The slurmdbd password only guards a socket-only server; keep one per state dir.
if [[ ! -s $STATE/db.pass ]]; then
  (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/db.pass")
fi
DB_PASS=$(<"$STATE/db.pass")
sql "CREATE DATABASE IF NOT EXISTS $DB_NAME;
     CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
     ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
     GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';" || die "could not set up the accounting DB"

# The controller state is wiped on every start, which would restart job ids at 1; continue after
# the highest id the accounting DB already holds, so sacct never mixes up two jobs.
FIRST_JOB_ID=1
if [[ -n $(sql "SHOW TABLES IN $DB_NAME LIKE '${CLUSTER}_job_table'") ]]; then
  FIRST_JOB_ID=$(sql "SELECT COALESCE(MAX(id_job), 0) + 1 FROM $DB_NAME.${CLUSTER}_job_table")
fi

# ---------------------------------------------------------------------------------------------
# 5. Slurm configs. The node line comes from `slurmd -C` (the hardware slurmd will report);
#    RealMemory a bit below it, or slurmd drains the node for "Low RealMemory".
hw=$(slurmd -C 2>/dev/null | head -n 1 || true)
field() { sed -n "s/.*\b$1=\([0-9]*\).*/\1/p" <<<"$hw"; }
CPUS=$(field CPUs)
MEM=$(field RealMemory)
if [[ -n $CPUS && -n $(field CoresPerSocket) ]]; then
  NODE_HW="CPUs=$CPUS Boards=$(field Boards) SocketsPerBoard=$(field SocketsPerBoard)"
  NODE_HW+=" CoresPerSocket=$(field CoresPerSocket) ThreadsPerCore=$(field ThreadsPerCore)"
else
  CPUS=$(nproc)
  NODE_HW="CPUs=$CPUS"
fi
[[ -n $MEM ]] || MEM=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024))
REAL_MEMORY=$((MEM * 95 / 100))

mkdir -p /etc/slurm
if [[ -f $SLURM_CONF ]] && ! grep -q '^# sambench-state=' "$SLURM_CONF"; then
  # Somebody else's config: keep a copy rather than silently destroy it.
  cp -n "$SLURM_CONF" "$SLURM_CONF.before-sambench"
fi
render() { # template -> stdout
  sed -e "s|@STATE@|$STATE|g" -e "s|@CLUSTER@|$CLUSTER|g" -e "s|@HOST@|$HOST|g" \
    -e "s|@NODE_HW@|$NODE_HW|g" -e "s|@REAL_MEMORY@|$REAL_MEMORY|g" \
    -e "s|@FIRST_JOB_ID@|$FIRST_JOB_ID|g" -e "s|@DB_USER@|$DB_USER|g" \
    -e "s|@DB_PASS@|$DB_PASS|g" -e "s|@DB_NAME@|$DB_NAME|g" "$1"
}
render "$HERE/slurm.conf.in" >"$SLURM_CONF.tmp"
chmod 644 "$SLURM_CONF.tmp"
mv "$SLURM_CONF.tmp" "$SLURM_CONF"
# slurmdbd insists on mode 600, owned by SlurmUser (root); it holds the DB password.
(umask 077 && render "$HERE/slurmdbd.conf.in" >"$SLURMDBD_CONF.tmp")
chown root:root "$SLURMDBD_CONF.tmp"
chmod 600 "$SLURMDBD_CONF.tmp"
mv "$SLURMDBD_CONF.tmp" "$SLURMDBD_CONF"

# ---------------------------------------------------------------------------------------------
# 6. slurmdbd (MYSQL_UNIX_PORT points the MariaDB client library at our socket), then the
#    cluster's row in the DB, so slurmctld registers cleanly on its first connection.
MYSQL_UNIX_PORT=$DB_SOCK start_daemon slurmdbd slurmdbd -D
wait_for "slurmdbd" slurmdbd dbd_ok
if ! has_cluster; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster failed"
fi

# ---------------------------------------------------------------------------------------------
# 7. slurmctld (fresh StateSaveLocation, see slurm.conf.in) and slurmd; ready once the node,
#    registered by this slurmd, is idle.
start_daemon slurmctld slurmctld -D
wait_for "slurmctld to answer" slurmctld ctld_up
start_daemon slurmd slurmd -D -N "$HOST"
wait_for "node $HOST to be idle" slurmd node_ready
# Both controllers must still be there (a crash right after registering would show here).
for d in slurmdbd slurmctld; do ours_alive "$d" >/dev/null || die "$d exited during startup"; done

# ---------------------------------------------------------------------------------------------
# 8. Probe: one real batch job end to end (munge credentials, slurmstepd, accounting). It also
#    absorbs the ~3 s slurmctld takes after a start before its first scheduling pass, which the
#    first test's job would otherwise pay.
probe=$(sbatch --parsable --chdir=/ --job-name=sambench-up-probe --output=/dev/null --wrap true) \
  || die "could not submit the probe job"
probe=${probe%%;*}
probe_state() { scontrol -o show job "$probe" | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }
probe_done() { [[ $(probe_state) =~ ^(COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY)$ ]]; }
wait_for "probe job $probe to finish" slurmd probe_done
[[ $(probe_state) == COMPLETED ]] || die "probe job $probe ended $(probe_state)"

summary "started in $((SECONDS - T0))s, state in $STATE"
