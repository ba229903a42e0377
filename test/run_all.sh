#!/usr/bin/env bash
# courier test runner: THE test command.
#
#   bash test/run_all.sh                      # everything
#   bash test/run_all.sh regress pgtap        # only some layers
#       layers: regress | pgtap | isolation | tap | stress
#
# Works as root from a fresh clone, from any cwd.  Steps:
#   deps     scripts/install_deps.sh (fast no-op when all packages are there)
#   build    make + make install at the repo top (PGXS), make -C test/mock_tms,
#            then the mock's own selftest (test/mock_tms/selftest.sh: every
#            dialect checked with curl), recorded as the step mock_selftest
#   layers 1-3 share ONE throwaway cluster (courier + pg_cron preloaded,
#            courier.database='' so no background workers; the tests drive
#            stages with courier.run_once):
#     regress    pg_regress, tests = REGRESS in the Makefile (sql/, expected/)
#     pgtap      every test/pgtap/*.sql in database courier_tap (pg_prove style)
#     isolation  pg_isolation_regress, tests = test/isolation/specs/*.spec
#   layer 4:
#     tap        test/t/*.pl with PostgreSQL::Test::Cluster (own clusters)
#   layer 5:
#     stress     test/stress/*.pl: app traffic (pgbench) against live workers
#                and a faulty mock TMS for COURIER_STRESS_SECONDS (60), a
#                kill -9 half way, then invariants counted as TAP assertions
#
# Counting: regress and isolation count one per test/spec; pgtap and tap one
# per assertion (a file that dies, or runs fewer tests than planned, adds at
# least one failure).  A step that cannot run at all (build failure, cluster
# that will not start) counts as failed.  The LAST line of output is exactly
#   N passed, N failed[, N skipped]
# and the exit status is non-zero if anything failed.
#
# Environment knobs (all optional):
#   TAP_TESTS="t/010_x.pl t/020_y.pl"   restrict layer 4 (paths relative to test/)
#   STRESS_TESTS="stress/stress.pl"     same for layer 5
#   COURIER_STRESS_SECONDS=60           traffic time of each stress file
#   PGTAP_TESTS, REGRESS_TESTS, ISOLATION_TESTS   same for the other layers
#                                       (pgtap: file paths; others: test names)
#   COURIER_TAP_VERBOSE=1               show every TAP line (prove -v)
#   COURIER_KEEP_TMP=1                  keep the work dir (and TAP data dirs)
#   COURIER_SKIP_DEPS=1                 do not run scripts/install_deps.sh
#   COURIER_SKIP_BUILD=1                do not build nor install the extension:
#                                       test what is installed (the mock is
#                                       still built)
#   COURIER_TEST_TIMEOUT=900            seconds per test file / pg_regress run
#   COURIER_TEST_PORT=55432             first port tried for the layer 1-3 cluster
#   COURIER_LOG_LINES=300               lines of each log / diff shown on failure
#   COURIER_REPO=/path                  test another checkout
#   COURIER_EXT_NAME=courier            extension name (only for testing this
#                                       harness with a scratch extension)
#
# TAP tests (run as postgres, cwd test/) get in their environment:
#   COURIER_REPO       the checkout (a copy if postgres cannot read the clone)
#   COURIER_MOCK_TMS   COURIER_REPO/test/mock_tms/mock_tms
#   PATH (PG 15 bin first), PERL5LIB, TESTDIR, TMPDIR, PG_REGRESS: everything
#   PostgreSQL::Test::Cluster writes lands in the temporary work dir.

set -uo pipefail   # no -e: failures are counted and reported, not fatal
export LC_ALL=C.UTF-8 LANG=C.UTF-8
unset LANGUAGE

HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "${COURIER_REPO:-$HARNESS_DIR/..}" && pwd) || { echo "bad COURIER_REPO"; exit 2; }
EXT=${COURIER_EXT_NAME:-courier}

PGBIN=/usr/lib/postgresql/15/bin
PG_CONFIG=$PGBIN/pg_config
PGXS_DIR=/usr/lib/postgresql/15/lib/pgxs
PG_REGRESS=$PGXS_DIR/src/test/regress/pg_regress
PG_ISOLATION_REGRESS=$PGXS_DIR/src/test/isolation/pg_isolation_regress
TAP_PERL_LIB=$PGXS_DIR/src/test/perl
TIMEOUT=${COURIER_TEST_TIMEOUT:-900}
LOG_LINES=${COURIER_LOG_LINES:-300}   # lines of each log/diff printed on failure

# shellcheck source=test/lib/cluster.sh
source "$HARNESS_DIR/lib/cluster.sh"

# ---------------------------------------------------------------- arguments
ALL_LAYERS=(regress pgtap isolation tap stress)
declare -A WANT=()
for arg in "$@"; do
  case $arg in
    regress|pgtap|isolation|tap|stress) WANT[$arg]=1 ;;
    -h|--help) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown layer '$arg' (expected: ${ALL_LAYERS[*]})" >&2; exit 2 ;;
  esac
done
if [[ ${#WANT[@]} -eq 0 ]]; then
  for l in "${ALL_LAYERS[@]}"; do WANT[$l]=1; done
fi
wanted() { [[ -n ${WANT[$1]:-} ]]; }

# ---------------------------------------------------------------- bookkeeping
TOTAL_PASS=0 TOTAL_FAIL=0 TOTAL_SKIP=0
SUMMARY=()

# record STEP PASSED FAILED SKIPPED [NOTE]
record() {
  local step=$1 p=$2 f=$3 s=$4 note=${5:-}
  TOTAL_PASS=$((TOTAL_PASS + p))
  TOTAL_FAIL=$((TOTAL_FAIL + f))
  TOTAL_SKIP=$((TOTAL_SKIP + s))
  local line
  line=$(printf '%-10s %4d passed, %4d failed' "$step:" "$p" "$f")
  ((s > 0)) && line+=", $s skipped"
  [[ -n $note ]] && line+="  ($note)"
  SUMMARY+=("$line")
}

banner() { printf '\n==================== %s ====================\n' "$*"; }

# show_file TITLE FILE [head]: print a log (its end) or a diff (its start).
show_file() {
  local title=$1 file=$2 how=${3:-tail} n
  [[ -s $file ]] || return 0
  n=$(wc -l <"$file")
  echo "----- $title ($file, $n lines$( ((n > LOG_LINES)) && echo ", $how $LOG_LINES")) -----"
  "$how" -n "$LOG_LINES" "$file"
  echo "----- end of $title -----"
}

# ---------------------------------------------------------------- work dir
WORK=$(mktemp -d /tmp/courier-test.XXXXXX)
chmod 755 "$WORK"
[[ $(id -u) -eq 0 ]] && chown postgres:postgres "$WORK"
CLUSTER_PORT=

export COURIER_TEST_RUN=$WORK   # marker inherited by everything we start

# shellcheck disable=SC2317  # called from the EXIT trap
cleanup() {
  # Stop every cluster under the work dir (ours and any a TAP test left
  # behind), then whatever this run started that is still alive (a test
  # interrupted by Ctrl-C, a mock server), then clusters again in case a
  # test started one meanwhile.
  trap '' INT TERM HUP PIPE   # a second Ctrl-C must not cut the cleanup short
  stop_clusters_under "$WORK"
  if kill_run_processes TERM; then
    for _ in 1 2 3 4 5; do
      sleep 1
      kill_run_processes 0 || break
    done
    kill_run_processes KILL
    stop_clusters_under "$WORK"
  fi
  if [[ -n ${COURIER_KEEP_TMP:-} ]]; then
    echo "work dir kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM HUP
# Output piped into `head` that already exited: without this trap SIGPIPE
# would kill us without running the cleanup, leaving clusters behind.
trap 'exit 141' PIPE

# ---------------------------------------------------------------- deps + build
step_deps() {
  if [[ -n ${COURIER_SKIP_DEPS:-} ]]; then
    echo "deps: skipped (COURIER_SKIP_DEPS)"
  elif [[ $(id -u) -ne 0 ]]; then
    echo "deps: not root, skipping scripts/install_deps.sh"
  elif ! bash "$REPO/scripts/install_deps.sh"; then
    record deps 0 1 0 "scripts/install_deps.sh failed"
    return 1
  fi
  return 0
}

# Build and install the extension; returns non-zero if the layers cannot run.
step_build() {
  local log=$WORK/build.log
  banner "build"
  if [[ -n ${COURIER_SKIP_BUILD:-} ]]; then
    echo "extension build skipped (COURIER_SKIP_BUILD): testing the installed one"
  elif ! make -C "$REPO" -j"$(nproc)" PG_CONFIG="$PG_CONFIG" >"$log" 2>&1; then
    show_file "build log" "$log"
    record build 0 1 0 "make failed; tests not run"
    return 1
  fi
  # Compiler warnings are worth seeing even when the build succeeds.
  if grep -q 'warning:' "$log" 2>/dev/null; then
    echo "compiler warnings:"
    grep -A3 'warning:' "$log" | head -n 60
  fi
  if [[ -z ${COURIER_SKIP_BUILD:-} ]] &&
     ! make -C "$REPO" PG_CONFIG="$PG_CONFIG" install >>"$log" 2>&1; then
    show_file "build log" "$log"
    record build 0 1 0 "make install failed; tests not run"
    return 1
  fi
  [[ -z ${COURIER_SKIP_BUILD:-} ]] && echo "extension built and installed"

  # The mock TMS server is only needed by the TAP tests: a failure there is
  # counted but the other layers still run.
  if [[ -f $REPO/test/mock_tms/Makefile ]]; then
    if ! make -C "$REPO/test/mock_tms" >"$WORK/mock_tms.log" 2>&1; then
      show_file "mock_tms build log" "$WORK/mock_tms.log"
      record mock_tms 0 1 0 "make -C test/mock_tms failed"
    else
      echo "mock TMS server built"
      step_mock_selftest
    fi
  fi
  return 0
}

# The mock's standalone selftest: its checks count like a layer's, on a
# line of their own.  Its last line is "N passed, N failed"; a run that
# ends otherwise (it could not start the mock, curl is missing, it hung)
# counts as one failure on top of what it reported.
step_mock_selftest() {
  local script=$REPO/test/mock_tms/selftest.sh log=$WORK/mock_selftest.log
  local last p f rc
  [[ -f $script ]] || return 0
  banner "mock TMS selftest"
  timeout -k 10 "$TIMEOUT" bash "$script" >"$log" 2>&1
  rc=$?
  last=$(tail -n 1 "$log")
  if [[ $last =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
    p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]}
    ((rc != 0 && f == 0)) && f=1
  else
    p=$(grep -c '^ok - ' "$log") f=$(( $(grep -c '^not ok - ' "$log") + 1 ))
  fi
  if ((f > 0)); then
    show_file "mock TMS selftest" "$log"
    record mock_selftest "$p" "$f" 0 "test/mock_tms/selftest.sh"
  else
    echo "mock TMS selftest: $p passed"
    record mock_selftest "$p" 0 0
  fi
}

# The tests run as postgres, which must be able to read the checkout (and cd
# into it).  A clone under /root is not readable: then test from a copy.
SRC=$REPO
stage_sources() {
  if as_pg test -r "$REPO/Makefile" -a -x "$REPO/test" 2>/dev/null; then
    return 0
  fi
  echo "postgres cannot read $REPO: testing from a copy in $WORK/src"
  mkdir -p "$WORK/src"
  tar -C "$REPO" --exclude=.git -cf - . | tar -C "$WORK/src" -xf -
  chown -R postgres:postgres "$WORK/src"
  SRC=$WORK/src
}

# ---------------------------------------------------------------- cluster (layers 1-3)
start_shared_cluster() {
  local data=$WORK/data log=$WORK/cluster.log
  banner "cluster for regress/pgtap/isolation"
  if ! cluster_init "$data" "$WORK/initdb.log"; then
    show_file "initdb log" "$WORK/initdb.log"
    return 1
  fi
  # courier.database = '' means: no background workers in this cluster;
  # the SQL layers drive the stages themselves with courier.run_once.
  cat >>"$data/postgresql.conf" <<EOF

# ---- added by test/run_all.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
shared_preload_libraries = '$EXT,pg_cron'
cron.database_name = 'postgres'
$EXT.database = ''
fsync = off
max_worker_processes = 32
log_min_messages = warning
EOF
  if ! cluster_start "$data" "${COURIER_TEST_PORT:-55432}" "$log"; then
    echo "could not start the test cluster"
    show_file "server log" "$log"
    return 1
  fi
  echo "cluster running on 127.0.0.1:$CLUSTER_PORT (data $data)"
}

stop_shared_cluster() {
  cluster_stop "$WORK/data"
  # Crashes and assertion failures are easy to miss in test output.
  # (LOG ranks above WARNING for the server log, so these lines are kept.)
  if grep -E 'PANIC|TRAP:|terminated by signal|was terminated by|crash of another server process' \
       "$WORK/cluster.log" >"$WORK/cluster.problems" 2>/dev/null; then
    show_file "server log: crashes / abnormal exits" "$WORK/cluster.problems"
  fi
  CLUSTER_PORT=
}

# ---------------------------------------------------------------- pg_regress parsing
# count_regress_results OUTPUT TEST...: sets R_PASS R_FAIL.  One per test
# asked for: a test that pg_regress never reported (crash, could not run)
# counts as failed.  PG15 prints "test NAME ... ok" (or "     NAME ... ok"
# inside a parallel group), "... FAILED", "... failed (ignored)".
count_regress_results() {
  local out=$1 t status
  shift
  R_PASS=0 R_FAIL=0
  declare -A st=()
  while read -r t status; do
    st[$t]=$status
  done < <(awk '$1 == "test" && $3 == "..." { print $2, $4; next }
                $2 == "..." { print $1, $3 }' "$out" 2>/dev/null)
  for t in "$@"; do
    if [[ ${st[$t]:-} == ok ]]; then
      R_PASS=$((R_PASS + 1))
    else
      R_FAIL=$((R_FAIL + 1))
      [[ -z ${st[$t]:-} ]] && echo "  $t: no result reported"
    fi
  done
}

# ---------------------------------------------------------------- missing inputs
# drop_missing_inputs DIR EXT TEST...: sets RUNNABLE to the tests that have
# an input file DIR/TEST.EXT and NO_INPUT to the count of those that do not
# (pg_regress would abort the whole run on the first missing one).
drop_missing_inputs() {
  local dir=$1 ext=$2 t
  shift 2
  RUNNABLE=() NO_INPUT=0
  for t in "$@"; do
    if [[ -f $dir/$t.$ext ]]; then
      RUNNABLE+=("$t")
    else
      echo "  $t: no input file $dir/$t.$ext (counted as failed)"
      NO_INPUT=$((NO_INPUT + 1))
    fi
  done
}

# ---------------------------------------------------------------- missing expected files
# pg_regress aborts the whole run at the first test without an expected file.
# When some are missing, run from an overlay of the input dir (symlinks) with
# empty expected files for them: those tests then fail normally and their
# whole output shows up in regression.diffs, ready to be reviewed and copied.
# prepare_inputdir DIR OVERLAY TEST...: prints the input dir to use.
prepare_inputdir() {
  local dir=$1 overlay=$2 t e
  shift 2
  local -a missing=()
  for t in "$@"; do
    [[ -f $dir/expected/$t.out ]] || missing+=("$t")
  done
  if ((${#missing[@]} == 0)); then
    echo "$dir"
    return
  fi
  mkdir -p "$overlay/expected"
  for e in "$dir"/*; do
    [[ $(basename "$e") == expected ]] || ln -s "$e" "$overlay/"
  done
  for e in "$dir"/expected/*; do
    [[ -e $e ]] && ln -s "$e" "$overlay/expected/"
  done
  for t in "${missing[@]}"; do
    echo "  $t: no expected/$t.out: running against an empty one" >&2
    : >"$overlay/expected/$t.out"
  done
  chmod -R a+rX "$overlay"
  echo "$overlay"
}

# ---------------------------------------------------------------- layer 1: pg_regress
regress_tests() {
  if [[ -n ${REGRESS_TESTS:-} ]]; then
    echo "$REGRESS_TESTS"
    return
  fi
  # Ask make for the REGRESS variable (handles continuation lines); fall back
  # to sed if make cannot read the Makefile.
  local tests
  # shellcheck disable=SC2016  # $(REGRESS) is for make, not the shell
  if ! tests=$(printf '__print_regress:\n\t@echo $(REGRESS)\n' |
               make --no-print-directory -s -C "$SRC" -f Makefile -f - \
                    PG_CONFIG="$PG_CONFIG" __print_regress 2>/dev/null); then
    tests=$(sed -n 's/^REGRESS[[:space:]]*[:+]\{0,1\}=[[:space:]]*//p' "$SRC/Makefile")
  fi
  echo "$tests"
}

layer_regress() {
  banner "layer 1: pg_regress"
  local -a tests
  read -r -a tests <<<"$(regress_tests)"
  if [[ ${#tests[@]} -eq 0 ]]; then
    echo "no tests (REGRESS is empty)"
    record regress 0 0 0 "no tests"
    return
  fi
  if [[ -z $CLUSTER_PORT ]]; then
    record regress 0 "${#tests[@]}" 0 "cluster not running"
    return
  fi
  drop_missing_inputs "$SRC/sql" sql "${tests[@]}"
  if ((${#RUNNABLE[@]} == 0)); then
    record regress 0 "$NO_INPUT" 0
    return
  fi
  tests=("${RUNNABLE[@]}")
  local out=$WORK/regress inputdir
  inputdir=$(prepare_inputdir "$SRC" "$WORK/regress_input" "${tests[@]}")
  as_pg mkdir -p "$out"
  (cd "$WORK" && as_pg timeout -k 10 "$TIMEOUT" "$PG_REGRESS" \
      --bindir="$PGBIN" --host=127.0.0.1 --port="$CLUSTER_PORT" \
      --inputdir="$inputdir" --outputdir="$out" \
      --load-extension="$EXT" --dbname=courier_regress \
      "${tests[@]}") 2>&1 | tee "$WORK/regress.out"
  local rc=${PIPESTATUS[0]}
  ((rc == 124)) && echo "pg_regress timed out after ${TIMEOUT}s"
  count_regress_results "$WORK/regress.out" "${tests[@]}"
  if ((R_FAIL > 0 || rc != 0)); then
    show_file "regression.diffs" "$out/regression.diffs" head
    ((R_FAIL == 0)) && R_FAIL=1   # pg_regress failed without a failing test
  fi
  R_FAIL=$((R_FAIL + NO_INPUT))
  record regress "$R_PASS" "$R_FAIL" 0
}

# ---------------------------------------------------------------- TAP counting
# pgTAP and Perl TAP files both run through TAP::Harness (what prove and
# pg_prove use), driven by this small Perl program so that we get exact
# per-assertion counts from the parser instead of scraping prove's output.
# Output on the console is the usual prove output.  Each file is wrapped in
# `timeout` so a hung test cannot hang CI.
write_tap_driver() {
  cat >"$WORK/tap_driver.pl" <<'PERL'
use strict;
use warnings;
use TAP::Harness;

# usage: tap_driver.pl MODE RESULTFILE TIMEOUT FILE...
#   MODE perl : run FILE with perl (prove)
#   MODE pgtap: run FILE with psql exactly like pg_prove does; connection
#               from PGHOST/PGPORT/PGUSER/PGDATABASE
my ($mode, $resultfile, $timeout, @files) = @ARGV;
my @psql = (qw(psql --no-psqlrc --no-align --quiet --pset pager=off
               --pset tuples_only=true --set ON_ERROR_STOP=1));

my $harness = TAP::Harness->new({
    verbosity => $ENV{COURIER_TAP_VERBOSE} ? 1 : 0,
    color     => 0,
    failures  => 1,                      # show "not ok" lines
    comments  => $mode eq 'pgtap' ? 1 : 0,  # pgTAP diagnostics are TAP comments
    exec      => sub {
        my (undef, $file) = @_;
        my @cmd = $mode eq 'pgtap' ? (@psql, '--file', $file) : ($^X, $file);
        return ['timeout', '-k', '10', $timeout, @cmd];
    },
});
my $agg = $harness->runtests(@files);

my ($pass, $fail, $skip) = (0, 0, 0);
my @bad;
for my $desc ($agg->descriptions) {
    my ($p) = $agg->parsers($desc);
    if ($p->skip_all) { $skip++; next; }
    my $s   = scalar $p->skipped;
    my $ok  = scalar($p->passed) - $s;     # passed includes skips
    my $bad = scalar $p->failed;
    # "died": bad/missing plan, or a non-zero exit without failed assertions
    # (Test::More exits with the number of failures, which is fine).
    my $died = $p->parse_errors || (($p->exit || $p->wait) && !$bad);
    if ($died) {
        my $planned = $p->tests_planned;
        my $missing = (defined $planned && $planned =~ /^\d+$/)
            ? $planned - $p->tests_run : 0;
        $bad += $missing > 1 ? $missing : 1;
        printf "  %s: died (exit %d%s)%s\n", $desc, $p->exit,
            ($p->exit == 124 || $p->exit == 137) ? ", timed out after ${timeout}s" : '',
            $missing > 0 ? ", $missing planned tests not run" : '';
    }
    push @bad, $desc if $bad;
    ($pass, $fail, $skip) = ($pass + $ok, $fail + $bad, $skip + $s);
}
open my $fh, '>', $resultfile or die "$resultfile: $!";
print $fh "pass $pass\nfail $fail\nskip $skip\n";
print $fh "badfile $_\n" for @bad;
close $fh;
PERL
  chmod 644 "$WORK/tap_driver.pl"
}

# read_tap_results FILE: sets T_PASS T_FAIL T_SKIP and array T_BAD.
read_tap_results() {
  T_PASS=0 T_FAIL=0 T_SKIP=0 T_BAD=()
  local k v
  [[ -f $1 ]] || return 1
  while read -r k v; do
    case $k in
      pass) T_PASS=$v ;; fail) T_FAIL=$v ;; skip) T_SKIP=$v ;;
      badfile) T_BAD+=("$v") ;;
    esac
  done <"$1"
}

# select_files DIR GLOB OVERRIDE: print the test files (relative to DIR),
# from OVERRIDE (space-separated) if set, else the sorted glob.  Override
# entries may be relative to DIR, to the repo, or bare file names in the
# glob's directory; one that matches nothing is printed as given (and then
# reported as not found).
select_files() {
  local dir=$1 glob=$2 override=$3
  (
    cd "$dir" || exit 0
    if [[ -z $override ]]; then
      for f in $glob; do [[ -f $f ]] && echo "$f"; done
      exit 0
    fi
    local -a words matches
    read -r -a words <<<"$override"
    for f in "${words[@]}"; do
      matches=()
      local g=${f#"$REPO"/}
      g=${g#"$SRC"/}
      for c in "$g" "${g#test/}" "$(dirname "$glob")/$g" "$f"; do
        mapfile -t matches < <(compgen -G "$c" | sort)   # patterns allowed: t/01*.pl
        ((${#matches[@]} > 0)) && break
      done
      if ((${#matches[@]} > 0)); then printf '%s\n' "${matches[@]}"; else echo "$f"; fi
    done
  )
}

# ---------------------------------------------------------------- layer 2: pgTAP
layer_pgtap() {
  banner "layer 2: pgTAP"
  local -a files missing=()
  local f
  mapfile -t files < <(select_files "$SRC" 'test/pgtap/*.sql' "${PGTAP_TESTS:-}")
  for f in "${files[@]}"; do
    [[ ($f == /* && -f $f) || -f $SRC/$f ]] || missing+=("$f")
  done
  if ((${#missing[@]} > 0)); then
    echo "not found: ${missing[*]}"
    record pgtap 0 "${#missing[@]}" 0 "test files not found"
    return
  fi
  if [[ ${#files[@]} -eq 0 ]]; then
    echo "no tests (test/pgtap/*.sql)"
    record pgtap 0 0 0 "no tests"
    return
  fi
  if [[ -z $CLUSTER_PORT ]]; then
    record pgtap 0 "${#files[@]}" 0 "cluster not running"
    return
  fi
  if ! { PGOPTIONS='-c client_min_messages=warning' \
         psql_on "$CLUSTER_PORT" postgres -c 'DROP DATABASE IF EXISTS courier_tap' \
                                         -c 'CREATE DATABASE courier_tap' &&
         psql_on "$CLUSTER_PORT" courier_tap -c 'CREATE EXTENSION pgtap' \
                                             -c "CREATE EXTENSION $EXT"; }; then
    record pgtap 0 "${#files[@]}" 0 "could not create database courier_tap"
    return
  fi
  echo "(same as: cd $SRC && pg_prove --ext .sql -h 127.0.0.1 -p $CLUSTER_PORT -U postgres -d courier_tap ${files[*]})"
  (cd "$SRC" && PGHOST=127.0.0.1 PGPORT=$CLUSTER_PORT PGUSER=postgres PGDATABASE=courier_tap \
      PATH="$PGBIN:$PATH" perl "$WORK/tap_driver.pl" pgtap "$WORK/pgtap.result" "$TIMEOUT" "${files[@]}")
  if ! read_tap_results "$WORK/pgtap.result"; then
    record pgtap 0 "${#files[@]}" 0 "TAP driver failed"
    return
  fi
  record pgtap "$T_PASS" "$T_FAIL" "$T_SKIP"
}

# ---------------------------------------------------------------- layer 3: isolation
layer_isolation() {
  banner "layer 3: isolation"
  local -a specs
  if [[ -n ${ISOLATION_TESTS:-} ]]; then
    read -r -a specs <<<"$ISOLATION_TESTS"
  else
    mapfile -t specs < <(cd "$SRC/test/isolation/specs" 2>/dev/null &&
                         for f in *.spec; do [[ -f $f ]] && echo "${f%.spec}"; done)
  fi
  if [[ ${#specs[@]} -eq 0 ]]; then
    echo "no tests (test/isolation/specs/*.spec)"
    record isolation 0 0 0 "no tests"
    return
  fi
  if [[ -z $CLUSTER_PORT ]]; then
    record isolation 0 "${#specs[@]}" 0 "cluster not running"
    return
  fi
  drop_missing_inputs "$SRC/test/isolation/specs" spec "${specs[@]}"
  if ((${#RUNNABLE[@]} == 0)); then
    record isolation 0 "$NO_INPUT" 0
    return
  fi
  specs=("${RUNNABLE[@]}")
  local out=$WORK/isolation inputdir
  inputdir=$(prepare_inputdir "$SRC/test/isolation" "$WORK/isolation_input" "${specs[@]}")
  as_pg mkdir -p "$out"
  (cd "$WORK" && as_pg timeout -k 10 "$TIMEOUT" "$PG_ISOLATION_REGRESS" \
      --bindir="$PGBIN" --host=127.0.0.1 --port="$CLUSTER_PORT" \
      --inputdir="$inputdir" --outputdir="$out" \
      --load-extension="$EXT" --dbname=courier_isolation \
      "${specs[@]}") 2>&1 | tee "$WORK/isolation.out"
  local rc=${PIPESTATUS[0]}
  ((rc == 124)) && echo "pg_isolation_regress timed out after ${TIMEOUT}s"
  count_regress_results "$WORK/isolation.out" "${specs[@]}"
  if ((R_FAIL > 0 || rc != 0)); then
    show_file "isolation regression.diffs" "$out/regression.diffs" head
    ((R_FAIL == 0)) && R_FAIL=1
  fi
  R_FAIL=$((R_FAIL + NO_INPUT))
  record isolation "$R_PASS" "$R_FAIL" 0
}

# ---------------------------------------------------------------- layers 4 and 5: Perl TAP
# run_perl_tap STEP GLOB OVERRIDE: run the Perl TAP files GLOB (relative to
# test/, or OVERRIDE) as postgres from test/, through tap_driver.pl, in the
# work dir WORK/STEP, and record them under STEP.
run_perl_tap() {
  local step=$1 glob=$2 override=$3
  local testdir=$SRC/test
  local -a files missing=()
  local f
  mapfile -t files < <(select_files "$testdir" "$glob" "$override")
  for f in "${files[@]}"; do
    [[ ($f == /* && -f $f) || -f $testdir/$f ]] || missing+=("$f")
  done
  if ((${#missing[@]} > 0)); then
    echo "not found under $testdir: ${missing[*]}"
    record "$step" 0 "${#missing[@]}" 0 "test files not found"
    return
  fi
  if [[ ${#files[@]} -eq 0 ]]; then
    echo "no tests (test/$glob)"
    record "$step" 0 0 0 "no tests"
    return
  fi
  # Everything the TAP modules write goes into the work dir:
  #   TESTDIR   -> $TESTDIR/tmp_check (data dirs, tmp_check/log, port locks)
  #   TMPDIR    -> tempdir_short (unix socket dirs)
  #   PG_REGRESS-> used by Cluster->init for --config-auth
  # PG_TEST_NOCLEAN keeps the data dirs of passing tests (with COURIER_KEEP_TMP).
  local stepwork=$WORK/$step
  as_pg mkdir -p "$stepwork/tmp_check" "$stepwork/tmp"
  local -a env=(
    PATH="$PGBIN:$PATH"
    PERL5LIB="$TAP_PERL_LIB${PERL5LIB:+:$PERL5LIB}"
    TESTDIR="$stepwork"
    TMPDIR="$stepwork/tmp"
    PG_REGRESS="$PG_REGRESS"
    COURIER_REPO="$SRC"
    COURIER_MOCK_TMS="$SRC/test/mock_tms/mock_tms"
    COURIER_EXT_NAME="$EXT"
  )
  [[ -n ${COURIER_STRESS_SECONDS:-} ]] && env+=(COURIER_STRESS_SECONDS="$COURIER_STRESS_SECONDS")
  [[ -n ${COURIER_KEEP_TMP:-} ]] && env+=(PG_TEST_NOCLEAN=1)
  echo "(as postgres, same as: cd $testdir && ${env[*]:1} PATH=$PGBIN:\$PATH prove ${files[*]})"
  (cd "$testdir" && as_pg env "${env[@]}" \
      perl "$WORK/tap_driver.pl" perl "$stepwork/result" "$TIMEOUT" "${files[@]}")
  if ! read_tap_results "$stepwork/result"; then
    record "$step" 0 "${#files[@]}" 0 "TAP driver failed"
    return
  fi
  # Logs of failed files: regress_log_NAME (the test's own log) and
  # NAME_<node>.log (each cluster's server log; stress.pl also keeps its
  # pgbench logs there).
  local name logf
  for f in "${T_BAD[@]}"; do
    name=$(basename "$f" .pl)
    for logf in "$stepwork/tmp_check/log/regress_log_$name" \
                "$stepwork/tmp_check/log/${name}_"*.log; do
      [[ -f $logf ]] && show_file "$(basename "$logf")" "$logf"
    done
  done
  record "$step" "$T_PASS" "$T_FAIL" "$T_SKIP"
}

layer_tap() {
  banner "layer 4: TAP (PostgreSQL::Test::Cluster)"
  run_perl_tap tap 't/*.pl' "${TAP_TESTS:-}"
}

# test/stress/*.pl: real app traffic (pgbench) against live workers, a faulty
# mock and a kill -9, with invariants as TAP assertions.
layer_stress() {
  banner "layer 5: stress (pgbench traffic, faulty mock, kill -9)"
  run_perl_tap stress 'stress/*.pl' "${STRESS_TESTS:-}"
}

# ---------------------------------------------------------------- main
main() {
  echo "courier tests: repo $REPO, work dir $WORK, layers: $(for l in "${ALL_LAYERS[@]}"; do wanted "$l" && printf '%s ' "$l"; done)"
  if step_deps && step_build; then
    stage_sources
    write_tap_driver
    if wanted regress || wanted pgtap || wanted isolation; then
      if ! start_shared_cluster; then
        record cluster 0 1 0 "could not start the test cluster"
      fi
      wanted regress && layer_regress
      wanted pgtap && layer_pgtap
      wanted isolation && layer_isolation
      stop_shared_cluster
    fi
    wanted tap && layer_tap
    wanted stress && layer_stress
  fi

  banner "summary"
  local line
  for line in "${SUMMARY[@]}"; do echo "$line"; done
  if ((TOTAL_SKIP > 0)); then
    echo "$TOTAL_PASS passed, $TOTAL_FAIL failed, $TOTAL_SKIP skipped"
  else
    echo "$TOTAL_PASS passed, $TOTAL_FAIL failed"
  fi
  ((TOTAL_FAIL == 0))
}

# One line, so bash has read all of it before running: editing this file
# during a run cannot change what the rest of the run executes.
main; exit $?
