#!/usr/bin/env bash
# Set up dicom-gateway on a fresh Debian/Ubuntu machine with Python 3.11 (run as root for apt).
#   scripts/setup.sh          the project venv (.venv) with the gateway installed
#   scripts/setup.sh --test   also the real test peers: DCMTK, Orthanc, promtool, pytest
# Idempotent: what is already there is not installed again.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_pkgs=()
pick() { command -v "$1" >/dev/null 2>&1 || apt_pkgs+=("$2"); }
pick python3.11 python3.11
python3.11 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_pkgs+=(python3.11-venv)
if [ "$want_test" = 1 ]; then
  pick storescu dcmtk
  pick Orthanc orthanc
  pick promtool prometheus
  pick systemd-analyze systemd   # tests/test_ops.py verifies the systemd unit
  pick unshare util-linux
  pick ip iproute2
  pick haproxy haproxy           # tests/test_replicas.py: gateways behind a TCP load balancer
fi
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${apt_pkgs[*]}"
  # Packages like orthanc and prometheus would start system services listening on all
  # interfaces; the tests start their own on loopback, so keep the services from starting.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

py=$(command -v python3.11 || command -v python3)
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
# The gateway with the protection extra (torch, torchvision, h5py: the protection methods and
# the offline tools); a partner who only verifies and restores needs the base install alone
# (docs/partners.md).
extras="protect"
[ "$want_test" = 1 ] && extras="protect,test"
# torch's version: this pin is what the project is tested with (the extra allows torch>=2.4);
# on x86_64 Debian with Python 3.11 pip may take it from a local wheel cache.
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]"
echo "setup: ready (.venv/bin/dicom-gateway)"
