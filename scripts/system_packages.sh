#!/usr/bin/env bash
# System packages the test suite uses beyond Python and Rust, from Debian:
# PostgreSQL (a real server for the alert outbox tests) and nginx (a real
# proxy in front of the gateway). Installed when missing and this is a Debian
# machine we are root on; otherwise those tests are skipped with their reason
# printed.
set -euo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (Debian) for the tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "note: ${missing[*]} not installed; the tests that need them will be skipped (apt-get install ${missing[*]})"
fi
