#!/usr/bin/env bash
# Install the Debian packages handover's lab and tests need, or say which are missing.
set -euo pipefail
# pacemaker-cli-utils (cibadmin, crm_resource, crm_mon, ...) is only a Recommends of pacemaker, and
# recommends are not installed below: it must be named. resource-agents brings ocf-tester, which
# checks handover's OCF agent (its meta-data with libxml2-utils' xmllint); prometheus and
# prometheus-alertmanager bring promtool and amtool, which check infra/monitoring/ (their
# services are not started here). redis-server and haproxy: Prefect without a single server
# (`handover server start --ha`), whose parts handover starts itself. mariadb-server: the geo
# lab's databases (mariadbd, mariadb-install-db; GTID replication between its sites) and the
# mariadb-dump/mariadb clients handover rebuilds a replica with.
PACKAGES=(openssh-server openssh-client postgresql nftables procps util-linux iproute2 python3-venv
  corosync pacemaker pacemaker-cli-utils resource-agents libxml2-utils bind9 prometheus
  prometheus-alertmanager systemd redis-server haproxy mariadb-server)
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "handover needs these Debian packages: ${missing[*]}" >&2
  echo "install them as root: apt-get install -y ${missing[*]}" >&2
  echo "(the lab also needs root to run: it creates namespaces, mounts and firewall rules)" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
