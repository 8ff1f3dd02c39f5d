#!/bin/bash
# What OpenNebula 7.5's stock vmm/kvm/migrate does for a live migration on shared
# storage, transcribed from its Ruby (remotes/kvm/migrate with lib/kvm/
# opennebula_vm.rb: snapshots_delete, live_migrate, cleanup_host,
# snapshots_redefine) into the same virsh commands, so the tests can put the
# framework's outcome beside the stock one on the same real faults. Not shipped:
# the stock script needs OpenNebula's Ruby libraries, which the test hosts lack.
#
# argv: DEPLOY_ID DEST_HOST SRC_HOST VMID [HOST]; stdin: VMM_DRIVER_ACTION_DATA
# From the host's kvmrc (sourced like load_remote_env): LIBVIRT_URI,
# MIGRATE_OPTIONS, and the destination URI as VMM_EXEC_DEST_URI with {host}
# replaced (stock: $QEMU_PROTOCOL://host/system; the test hosts are unix sockets)
deploy_id=$1 dst_host=$2
cat >/dev/null                                   # the request (only per-VM options)
# load_remote_env: the driver's rc (kvmrc) from the remotes tree
remotes="$(cd "$(dirname "$0")/../.." && pwd)"
for rc in "$remotes/vmm/kvm/kvmrc" "$remotes/etc/vmm/kvm/kvmrc"; do
    [ -f "$rc" ] && . "$rc"
done
virsh="virsh --connect $LIBVIRT_URI"
dest_uri=${VMM_EXEC_DEST_URI//\{host\}/$dst_host}

# "Migration can't be done with domain snapshots, drop them first"
for snap in $($virsh snapshot-list "$deploy_id" --name 2>/dev/null); do
    $virsh snapshot-delete "$deploy_id" --metadata --snapshotname "$snap" >/dev/null
done

# kvm_vm.live_migrate: virsh migrate --live $MIGRATE_OPTIONS DOMAIN URI
if ! err=$($virsh migrate --live $MIGRATE_OPTIONS "$deploy_id" "$dest_uri" 2>&1 >/dev/null)
then
    # cleanup_host(:host): destroy and undefine the domain on the destination
    virsh --connect "$dest_uri" destroy "$deploy_id" >/dev/null 2>&1
    virsh --connect "$dest_uri" undefine "$deploy_id" >/dev/null 2>&1
    echo "Error migrating VM $deploy_id: $err" >&2
    exit 1
fi
# snapshots_redefine(dst): from the <snap>.xml files the TM copied (none here)
exit 0
