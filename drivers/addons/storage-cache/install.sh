#!/bin/sh
# install.sh [REMOTES_DIR] -- installs the add-on next to the stock remotes
# (default /var/lib/one/remotes) without touching any stock file. Run
# `onehost sync` afterwards, or let the driver's remotes update ship it.
set -e
remotes="${1:-/var/lib/one/remotes}"
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$remotes/vmm_exec/hooks.d" "$remotes/vmm_exec/addons/storage-cache"
cp "$here/hooks.d/50-storage-cache.toml" "$remotes/vmm_exec/hooks.d/"
cp -p "$here/scripts/setup" "$here/scripts/teardown" "$here/scripts/revert" \
    "$remotes/vmm_exec/addons/storage-cache/"
echo "storage-cache add-on installed in $remotes"
