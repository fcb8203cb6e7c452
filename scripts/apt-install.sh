#!/usr/bin/env bash
# scripts/apt-install.sh WHO PKG...: installs the Debian packages as root
# with apt-get; otherwise prints the command to run and fails. WHO names the
# caller in the messages. Does nothing when no package is given.
set -euo pipefail
who=$1
shift
[ $# -gt 0 ] || exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$who: installing $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
else
    echo "$who: missing $*; run:" >&2
    echo "    sudo apt-get install -y $*" >&2
    exit 1
fi
