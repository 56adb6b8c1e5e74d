#!/usr/bin/env bash
# System packages the test suite uses beyond Python and Rust: Debian's
# PostgreSQL (a real server for the alert outbox tests). Installed when
# missing and this is a Debian machine we are root on; otherwise those tests
# are skipped with their reason printed.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing postgresql (Debian) for the alert outbox tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
else
    echo "note: postgresql is not installed; the PostgreSQL outbox tests will be skipped (apt-get install postgresql)"
fi
