#!/bin/sh
# install.sh [REMOTES_DIR] -- installs the libvirt migration framework into the
# remotes tree (default /var/lib/one/remotes) as vmm_exec/libvirt/, and its hook
# file (which makes the driver run it instead of the stock vmm/<hv>/migrate) into
# vmm_exec/hooks.d/, without touching any stock file. An existing libvirtrc is
# kept. Run `onehost sync` afterwards, or let the driver's remotes update ship it.
set -e
remotes="${1:-/var/lib/one/remotes}"
here="$(cd "$(dirname "$0")" && pwd)"
dest="$remotes/vmm_exec/libvirt"
mkdir -p "$dest/vmm_libvirt"
cp -p "$here/migrate" "$here/recover" "$here/README.md" "$dest/"
cp -p "$here"/vmm_libvirt/*.py "$dest/vmm_libvirt/"
[ -e "$dest/libvirtrc" ] || cp -p "$here/libvirtrc" "$dest/"
chmod 755 "$dest/migrate" "$dest/recover"
for hook in "$here"/hooks/*.toml; do
    [ -f "$hook" ] || continue
    mkdir -p "$remotes/vmm_exec/hooks.d"
    cp "$hook" "$remotes/vmm_exec/hooks.d/"
done
echo "libvirt migration framework installed in $dest"
