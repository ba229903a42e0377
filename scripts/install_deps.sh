#!/usr/bin/env bash
# Install everything needed to build and test courier on Debian 12 (bookworm).
#
# Idempotent and fast on reruns: if every package is already installed we do
# not touch apt at all (no `apt-get update`), so test/run_all.sh can call this
# every time.  Must run as root (CI runs as root).
set -euo pipefail

PACKAGES=(
  # server, headers + PGXS (pulls postgresql-client-15: pg_regress,
  # pg_isolation_regress, isolationtester, PostgreSQL::Test::* TAP modules)
  postgresql-15
  postgresql-server-dev-15
  # pgTAP; pg_prove is only a Recommends of postgresql-15-pgtap, so name it
  postgresql-15-pgtap
  libtap-parser-sourcehandler-pgtap-perl
  postgresql-15-cron
  # courier links libcurl; the mock TMS server uses libmicrohttpd
  libcurl4-openssl-dev
  libmicrohttpd-dev
  # test/mock_tms/selftest.sh (run by test/run_all.sh after building the
  # mock): curl for its requests, openssl to sign the SENS ones (base64 is
  # in coreutils)
  curl
  openssl
  # PostgreSQL::Test::Cluster needs IPC::Run; `prove` and TAP::Harness are in perl
  libipc-run-perl
  perl
  # build tools; libc6-dev is only a Recommends of gcc
  make
  gcc
  libc6-dev
  pkg-config
  ca-certificates
  # docs/monitoring is checked against the real thing (t/080, t/081):
  # postgres_exporter scraped by Prometheus, alerts read back from
  # Alertmanager, rules checked by promtool.  Debian names the binaries
  # prometheus-postgres-exporter and prometheus-alertmanager.
  prometheus
  prometheus-postgres-exporter
  prometheus-alertmanager
)

if [[ $(id -u) -ne 0 ]]; then
  echo "install_deps.sh: must run as root" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
  [[ $status == ii* ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install_deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "install_deps: installing: ${missing[*]}"

# Was the Debian default cluster already running before we installed anything?
# If the package install starts it, we stop it again afterwards: our test
# clusters use their own ports and sockets, so it only costs memory and CPU.
default_was_online=no
if command -v pg_lsclusters >/dev/null 2>&1 &&
   pg_lsclusters -h 2>/dev/null | awk '$1=="15" && $2=="main" {print $4}' | grep -q online; then
  default_was_online=yes
fi

export DEBIAN_FRONTEND=noninteractive
# The Prometheus packages start their daemons on install unless a
# policy-rc.d says no: the tests run their own on private ports, so keep
# the system's from starting (and remove the policy again if we added it).
added_policy=no
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  added_policy=yes
fi
apt-get update
# Only the missing ones: naming an installed package would also upgrade it.
apt-get install -y --no-install-recommends "${missing[@]}"
[[ $added_policy == yes ]] && rm -f /usr/sbin/policy-rc.d

if [[ $default_was_online == no ]] && command -v pg_lsclusters >/dev/null 2>&1 &&
   pg_lsclusters -h 2>/dev/null | awk '$1=="15" && $2=="main" {print $4}' | grep -q online; then
  echo "install_deps: stopping the Debian default cluster 15/main started by the install"
  pg_ctlcluster 15 main stop || true
fi

echo "install_deps: done"
