# shellcheck shell=bash
# Helpers for test/run_all.sh: run things as the postgres OS user and manage
# throwaway PostgreSQL 15 clusters.  Sourced, not executed.
#
# Why the postgres user: initdb and postgres refuse to run as root, and CI
# runs as root.  When the script already runs as a non-root user we just run
# the commands directly (handy on a developer box).

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

# as_pg CMD...: run CMD as the postgres OS user, keeping our environment
# (runuser without --login only resets HOME, SHELL, USER, LOGNAME).
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# port_is_free PORT: true when nothing accepts TCP connections on 127.0.0.1:PORT.
port_is_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pick_free_port START: print the first free port in [START, START+200).
pick_free_port() {
  local p
  for ((p = $1; p < $1 + 200; p++)); do
    if port_is_free "$p"; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# cluster_init DATADIR LOGFILE: initdb as postgres; the parent of DATADIR must
# be writable by postgres.
cluster_init() {
  local datadir=$1 log=$2
  as_pg "$PGBIN/initdb" -D "$datadir" --no-sync -A trust -E UTF8 --locale=C \
    -U postgres >"$log" 2>&1
}

# cluster_start DATADIR FIRST_PORT LOGFILE: start the cluster on the first
# free port from FIRST_PORT, retrying on the next ports if the start fails
# (another run may grab the same port between our check and the bind).
# Sets CLUSTER_PORT on success.
cluster_start() {
  local datadir=$1 port=$2 log=$3
  for _ in 1 2 3 4 5; do
    port=$(pick_free_port "$port") || return 1
    if as_pg "$PGBIN/pg_ctl" -D "$datadir" -l "$log" -w -t 120 \
         -o "-p $port" start >/dev/null 2>&1; then
      # shellcheck disable=SC2034  # read by the caller
      CLUSTER_PORT=$port
      return 0
    fi
    # Not a port clash: give up and let the caller show the log.
    grep -q 'could not bind\|could not create any TCP/IP sockets\|Address already in use' \
      "$log" 2>/dev/null || return 1
    port=$((port + 1))
  done
  return 1
}

# cluster_stop DATADIR: fast shutdown, then immediate, then SIGKILL of the
# postmaster recorded in DATADIR/postmaster.pid (a process we started).
cluster_stop() {
  local datadir=$1 pid
  [[ -f $datadir/postmaster.pid ]] || return 0
  as_pg "$PGBIN/pg_ctl" -D "$datadir" -m fast -t 30 -w stop >/dev/null 2>&1 && return 0
  as_pg "$PGBIN/pg_ctl" -D "$datadir" -m immediate -t 30 -w stop >/dev/null 2>&1 && return 0
  pid=$(head -n1 "$datadir/postmaster.pid" 2>/dev/null)
  if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

# stop_clusters_under DIR: stop every cluster whose data directory lies under
# DIR (ours, or ones a TAP test left running after being killed by a timeout:
# pg_ctl detaches the postmaster, so killing the test does not kill it).
stop_clusters_under() {
  local dir=$1 pidfile
  [[ -d $dir ]] || return 0
  while IFS= read -r pidfile; do
    cluster_stop "$(dirname "$pidfile")"
  done < <(find "$dir" -name postmaster.pid -type f 2>/dev/null)
}

# psql_on PORT DB ARGS...: run psql against the throwaway cluster.
psql_on() {
  local port=$1 db=$2
  shift 2
  "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

# Every process a test run starts inherits COURIER_TEST_RUN=<work dir> from
# run_all.sh.  Test files run under `timeout`, which puts them in their own
# process group, and pg_ctl detaches postmasters, so on Ctrl-C or a killed
# run some of them would survive us.  kill_run_processes SIGNAL signals
# every process carrying our marker (all of them started by this run),
# except this shell.  Returns 0 if it found any.
kill_run_processes() {
  local sig=$1 marker="COURIER_TEST_RUN=${COURIER_TEST_RUN:-}" envf pid found=1
  local -a envs
  [[ -n ${COURIER_TEST_RUN:-} ]] || return 1
  for envf in /proc/[0-9]*/environ; do
    pid=${envf#/proc/}
    pid=${pid%/environ}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    # bash builtins only: a helper process would carry the marker itself
    mapfile -d "" -t envs 2>/dev/null <"$envf" || continue
    local e
    for e in "${envs[@]}"; do
      if [[ $e == "$marker" ]]; then
        kill "-$sig" "$pid" 2>/dev/null && found=0
        break
      fi
    done
  done
  return $found
}
