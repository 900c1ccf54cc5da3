#!/bin/bash
# dracut module "stateless": runs stateless-loader before switch-root.
#
# Host paths (override with environment variables when running dracut):
#   STATELESS_LOADER    the static loader binary    (/usr/lib/stateless/stateless-loader)
#   STATELESS_CA        the site CA file, optional  (/etc/stateless/ca.pem)
#   STATELESS_KEYS_DIR  *.key files to embed, optional (/etc/stateless/initrd-keys)
# See dracut-module/README.md.

# moddir, initdir, hostonly, systemdsystemunitdir and SYSTEMCTL come from dracut.
# shellcheck disable=SC2154

stateless_loader() {
    echo "${STATELESS_LOADER:-/usr/lib/stateless/stateless-loader}"
}

# called by dracut
check() {
    require_binaries "$(stateless_loader)" || return 1
    # Only when asked for: dracut --add stateless.
    return 255
}

# called by dracut
depends() {
    # network: brought up only when the command line needs it (see
    # stateless-cmdline.sh); the handler (legacy, networkd, NetworkManager) is
    # whatever the host's dracut configuration picks.
    echo network
    return 0
}

# called by dracut
installkernel() {
    # Always, even in host-only mode: the key stick, the boot medium and the
    # cache disk are not necessarily attached when the initramfs is built.
    # erofs and loop: image layers (docs/bundle-format.md, "Image payload")
    # are mounted from the overlay's tmpfs, through a loop device on
    # kernels before 6.12.
    hostonly='' instmods overlay erofs loop ext4 \
        usb-storage uas sd_mod sr_mod xhci_pci xhci_hcd ehci_pci ehci_hcd \
        vfat iso9660 nls_cp437 nls_iso8859-1 nls_utf8 \
        tpm tpm_tis tpm_tis_core tpm_crb \
        virtio_pci virtio_blk virtio_scsi virtio_net
}

# called by dracut
install() {
    local loader ca keys k
    loader=$(stateless_loader)
    ca=${STATELESS_CA:-/etc/stateless/ca.pem}
    keys=${STATELESS_KEYS_DIR:-/etc/stateless/initrd-keys}

    inst_simple "$loader" /usr/sbin/stateless-loader
    inst_script "$moddir/stateless-run.sh" /usr/sbin/stateless-run
    # The loader trusts this file for https when no rd.stateless.ca/pin is given.
    [[ -f $ca ]] && inst_simple "$ca" /etc/stateless/ca.pem
    for k in "$keys"/*.key; do
        [[ -f $k ]] || continue
        inst_simple "$k" "/etc/stateless/keys/${k##*/}"
        chmod 0600 "$initdir/etc/stateless/keys/${k##*/}"
    done

    inst_hook cmdline 20 "$moddir/stateless-cmdline.sh"

    if dracut_module_included "systemd"; then
        inst_simple "$moddir/stateless-loader.service" "$systemdsystemunitdir/stateless-loader.service"
        $SYSTEMCTL -q --root "$initdir" add-requires initrd.target stateless-loader.service || exit 1
    else
        inst_hook pre-pivot 50 "$moddir/stateless-pre-pivot.sh"
    fi
}
