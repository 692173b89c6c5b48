#!/usr/bin/env bash
# apt_install.sh PACKAGE...: install Debian packages as root (or with sudo), quietly, after apt-get update.
# Shared by scripts/install_browser.sh and scripts/install_edge.sh.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "apt_install.sh: need root or sudo to apt-get install $*" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "$@" >/dev/null
