# package: the project as a user installs it. scripts/package --check builds
# the .deb and .rpm files (lintian, rpm file lists, a second build compared
# byte for byte); a clean Debian root (the systemd-root scenario's cached
# debootstrap, under a private overlay) gets them with `apt-get install`,
# which resolves their dependencies from Debian; `dracut --add stateless`
# runs inside it with no project path and no variable (only the site CA
# and key in /etc/stateless, where an admin puts them); that initramfs boots
# the root in QEMU against a served bundle. In the booted root the packaged
# server runs under systemd: it serves a bundle the packaged loader fetches,
# survives `systemctl restart`, and `systemd-analyze security` is recorded.
# Then the packages are removed (only the conffile and the data directory
# may stay) and purged (nothing may stay but the system user).
# shellcheck shell=bash

PKG_MOUNTS=()

# in_root CMD...: CMD inside the package root (chroot).
in_root() {
    chroot "$SDIR/root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}

mount_root_fs() {
    local kver=$1 m
    for m in proc sys dev; do
        mkdir -p "$SDIR/root/$m"
        mount --rbind "/$m" "$SDIR/root/$m"
        mount --make-rslave "$SDIR/root/$m"
        PKG_MOUNTS+=("$SDIR/root/$m")
    done
    # dracut needs the kernel's modules; the guest boots the host's kernel.
    mkdir -p "$SDIR/root/lib/modules/$kver"
    mount --bind -o ro "/lib/modules/$kver" "$SDIR/root/lib/modules/$kver"
    PKG_MOUNTS+=("$SDIR/root/lib/modules/$kver")
    # Downloaded .debs are kept for the next run.
    mkdir -p "$WORK/package-apt-cache" "$SDIR/root/var/cache/apt/archives"
    mount --bind "$WORK/package-apt-cache" "$SDIR/root/var/cache/apt/archives"
    PKG_MOUNTS+=("$SDIR/root/var/cache/apt/archives")
}

umount_root_fs() {
    local i
    for ((i = ${#PKG_MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -R "${PKG_MOUNTS[$i]}" 2> /dev/null || umount -l "${PKG_MOUNTS[$i]}" 2> /dev/null || true
    done
    PKG_MOUNTS=()
}

pkg_cleanup() {
    umount_root_fs
    umount "$SDIR/root" 2> /dev/null || umount -l "$SDIR/root" 2> /dev/null || true
    stop_servers
}

# package_files: every non-directory path the three packages installed, and
# their own directories.
package_files() {
    local p
    for p in stateless-loader statelessctl stateless-server; do
        in_root dpkg-query -L "$p"
    done | while read -r f; do
        # Directories, also through the root's merged-/usr links (/lib).
        if [ ! -d "$SDIR/root$f" ]; then echo "$f"; fi
    done | LC_ALL=C sort -u
}

# left_over FILE-LIST: the listed paths that still exist in the root, plus
# the packages' own directories if they do.
left_over() {
    local f
    while read -r f; do
        if [ -e "$SDIR/root$f" ] || [ -L "$SDIR/root$f" ]; then echo "$f"; fi
    done < "$1"
    # The enablement link `systemctl enable` made goes on purge too.
    f=/etc/systemd/system/multi-user.target.wants/stateless-server.service
    if [ -L "$SDIR/root$f" ]; then echo "$f"; fi
    for f in /usr/lib/stateless /usr/lib/dracut/modules.d/90stateless /etc/stateless /var/lib/stateless; do
        [ -e "$SDIR/root$f" ] && echo "$f/"
    done
    true
}

scenario() {
    local kver dist=$WORK/package-dist t0 t1 srv=$SDIR/srv tree=$SDIR/bundle-tree cmdline debs=() f
    trap pkg_cleanup EXIT
    kver=$(kernel_version)
    t0=$(date +%s)
    if [ "${SLTEST_NO_BUILD:-0}" = 1 ] && ls "$dist"/*.deb > /dev/null 2>&1; then
        log "SLTEST_NO_BUILD=1: using the packages already in $dist"
    else
        log "scripts/package --check (lintian, rpm, reproducibility)"
        rm -rf "$dist"
        if ! "$REPO/scripts/package" --check --out "$dist" > "$SDIR/package.log" 2>&1; then
            FAILURES+=("scripts/package --check failed: see $SDIR/package.log")
            return
        fi
    fi
    t1=$(date +%s)
    local t_package=$((t1 - t0))

    build_debian_root
    # A private overlay over the cached debootstrap tree: the cache stays
    # clean, and every run starts from the same Debian.
    mkdir -p "$SDIR/upper" "$SDIR/ovl-work" "$SDIR/root"
    mount -t overlay overlay -o "lowerdir=$DEBIAN_TREE,upperdir=$SDIR/upper,workdir=$SDIR/ovl-work" "$SDIR/root"
    mount_root_fs "$kver"
    cp /etc/resolv.conf "$SDIR/root/etc/resolv.conf"
    mkdir -p "$SDIR/root/tmp/dist"
    for f in "$dist"/*.deb; do
        cp "$f" "$SDIR/root/tmp/dist/"
        debs+=("/tmp/dist/${f##*/}")
    done

    log "apt-get install of the three .deb files in a clean Debian root"
    t0=$(date +%s)
    if ! in_root apt-get -q update > "$SDIR/apt.log" 2>&1 ||
        ! in_root apt-get -q -y install "${debs[@]}" >> "$SDIR/apt.log" 2>&1; then
        FAILURES+=("apt-get install of the packages failed: see $SDIR/apt.log")
        return
    fi
    t1=$(date +%s)
    local t_apt=$((t1 - t0))
    # shellcheck disable=SC2016 # dpkg-query's format, not the shell's
    expect "packages installed" "$(in_root dpkg-query -W -f='${db:Status-Status} ' stateless-loader statelessctl stateless-server)" "installed installed installed "
    expect "statelessctl on PATH" "$(in_root statelessctl --version | cut -d' ' -f1-2)" "statelessctl $(cargo_version)"
    expect "man page of the command line" "$(in_root sh -c 'test -f /usr/share/man/man7/stateless.cmdline.7.gz && echo yes')" "yes"
    expect "system user" "$(in_root id -un stateless 2> /dev/null)" "stateless"

    # What an admin does: the site CA and the key to embed, in /etc/stateless.
    install -D -m 0644 "$WORK/site/ca.pem" "$SDIR/root/etc/stateless/ca.pem"
    install -D -m 0600 "$WORK/site/site.key" "$SDIR/root/etc/stateless/initrd-keys/site.key"
    log "dracut --add stateless inside the root (no project paths, no variables)"
    t0=$(date +%s)
    if ! in_root dracut --force --add stateless --kver "$kver" "/boot/initrd.img-$kver" > "$SDIR/dracut.log" 2>&1; then
        FAILURES+=("dracut --add stateless failed in the package root: see $SDIR/dracut.log")
        return
    fi
    t1=$(date +%s)
    local t_dracut=$((t1 - t0))
    cp "$SDIR/root/boot/initrd.img-$kver" "$SDIR/initrd.img"
    # SLTEST_PACKAGE_GROWTH=1: the same dracut without the module, for the
    # growth docs/performance.md reports (one more dracut run, so opt-in).
    if [ "${SLTEST_PACKAGE_GROWTH:-0}" = 1 ]; then
        in_root dracut --force --kver "$kver" /tmp/initrd-without.img > "$SDIR/dracut-without.log" 2>&1 ||
            FAILURES+=("dracut without the module failed: see $SDIR/dracut-without.log")
        local with without
        with=$(stat -c %s "$SDIR/initrd.img")
        without=$(stat -c %s "$SDIR/root/tmp/initrd-without.img")
        log "initramfs: $with bytes with the module, $without without: $((with - without)) bytes more"
        echo "$with $without" > "$SDIR/growth"
    fi
    expect "loader in the initramfs" "$(lsinitrd_has "$SDIR/initrd.img" usr/sbin/stateless-loader)" "yes"

    # The packaged server, enabled as an admin would, with a bundle the
    # service user published; the report checks it after boot.
    "$CTL" bundle pack "$(served_tree)" -o "$SDIR/root/tmp/srvtest.bundle" --force --generation 3 \
        --key "$WORK/site/site.key" --scope node:srvtest > /dev/null
    install -D -m 0600 "$WORK/site/site.key" "$SDIR/root/etc/sltest/site.key"
    in_root runuser -u stateless -- statelessctl publish --data /var/lib/stateless --node srvtest /tmp/srvtest.bundle \
        > "$SDIR/publish.log" 2>&1 || FAILURES+=("publish as the service user failed: see $SDIR/publish.log")
    in_root systemctl enable stateless-server.service > /dev/null 2>&1
    install -m 0755 "$HARNESS/scenarios/package/report" "$SDIR/root/usr/local/sbin/sltest-package"
    mkdir -p "$SDIR/root/etc/systemd/system/sltest-report.service.d"
    printf '[Unit]\nAfter=stateless-server.service\n[Service]\nExecStartPre=/usr/local/sbin/sltest-package\n' \
        > "$SDIR/root/etc/systemd/system/sltest-report.service.d/package.conf"
    # The root's image: what the package root holds now.
    umount_root_fs
    rm -f "$SDIR/root/etc/resolv.conf"
    local mb
    mb=$(($(du -sm "$SDIR/root" | cut -f1) + 256))
    mkfs.ext4 -q -L debian-root -d "$SDIR/root" "$SDIR/root.img" "${mb}M"

    # The node's bundle, served over https by nginx as in systemd-root.
    mkdir -p "$srv/v1/nodes/$NODE_UUID" "$tree/etc/sltest"
    echo "package generation 21" > "$tree/etc/sltest/marker"
    "$CTL" bundle pack "$tree" -o "$srv/v1/nodes/$NODE_UUID/bundle" --generation 21 \
        --key "$WORK/site/site.key" --delete /etc/sltest/delete-me > /dev/null
    start_nginx cfg "$srv" tls
    cmdline="$(base_cmdline) root=/dev/vda rw ip=dhcp rd.stateless.server=https://$HOST_FROM_GUEST:$NGINX_PORT"
    set_net
    boot boot1 -kernel "$KERNEL" -initrd "$SDIR/initrd.img" -append "$cmdline" \
        -drive "file=$SDIR/root.img,format=raw,if=virtio" "${NET[@]}"
    rm -f "$SDIR/root.img"
    expect_applied server "package generation 21"
    expect_console "stateless: applied generation 21 .*\[stateless-loader $(cargo_version) \(commit [0-9a-f]{12}\)\]" \
        "the loader's debug console line names its version and commit"
    expect "server unit enabled" "$(marker SERVER-ENABLED)" "enabled"
    expect "server unit active" "$(marker SERVER-ACTIVE)" "active stateless"
    expect "fetch from the packaged server" "$(marker SERVER-FETCH1)" "yes"
    expect "server restarted" "$(marker SERVER-RESTARTED)" "yes"
    expect "fetch after the restart" "$(marker SERVER-FETCH2)" "yes"
    expect "data directory owner and mode" "$(marker SERVER-STATE)" "stateless 750 stateless 700"
    local exposure
    exposure=$(marker EXPOSURE)
    if ! awk -v e="${exposure%% *}" 'BEGIN { exit !(e != "" && e + 0 < 3.0) }'; then
        FAILURES+=("systemd-analyze security: exposure '$exposure', wanted under 3.0")
    fi

    # Remove, then purge: what policy lets stay, and nothing else.
    mount_root_fs "$kver"
    package_files > "$SDIR/package-files.txt"
    # The admin's own files (the CA and key put there above) are theirs to
    # remove, not the packages'.
    rm -rf "$SDIR/root/etc/stateless/ca.pem" "$SDIR/root/etc/stateless/initrd-keys"
    in_root apt-get -q -y remove stateless-server stateless-loader statelessctl > "$SDIR/remove.log" 2>&1 ||
        FAILURES+=("apt-get remove failed: see $SDIR/remove.log")
    expect "left after remove" "$(left_over "$SDIR/package-files.txt" | tr '\n' ' ')" \
        "/etc/stateless/server.env /etc/systemd/system/multi-user.target.wants/stateless-server.service /etc/stateless/ /var/lib/stateless/ "
    # dpkg, not apt: after remove only stateless-server (its conffile) is
    # still known to apt.
    in_root dpkg --purge stateless-server stateless-loader statelessctl > "$SDIR/purge.log" 2>&1 ||
        FAILURES+=("dpkg --purge failed: see $SDIR/purge.log")
    expect "left after purge" "$(left_over "$SDIR/package-files.txt" | tr '\n' ' ')" ""
    # shellcheck disable=SC2016 # dpkg-query's format, not the shell's
    expect "dpkg after purge" "$(in_root dpkg-query -W -f='${Package} ${db:Status-Status}\n' stateless-loader statelessctl \
        stateless-server 2> /dev/null | grep -v ' not-installed$' | tr '\n' ' ')" ""
    pkg_cleanup
    rm -rf "$SDIR/upper" "$SDIR/ovl-work"
    TIMES="package+checks ${t_package} s, apt ${t_apt} s, dracut ${t_dracut} s, boot $BOOT_SECONDS s, exposure ${exposure%% *}"
}

# cargo_version: the workspace version, as the binaries print it.
cargo_version() {
    (cd "$REPO" && cargo metadata --format-version 1 --no-deps) |
        jq -r '.packages[] | select(.name == "statelessctl") | .version'
}

# served_tree: a tree for the bundle the packaged server serves.
served_tree() {
    local t=$SDIR/served-tree
    mkdir -p "$t/etc/sltest"
    echo "served by stateless-server" > "$t/etc/sltest/served"
    echo "$t"
}

# lsinitrd_has IMAGE PATH: yes when the initramfs holds PATH.
lsinitrd_has() {
    # Not grep -q: lsinitrd killed by SIGPIPE would fail the pipeline.
    if lsinitrd "$1" 2> /dev/null | grep -E " $2\$" > /dev/null; then echo yes; else echo no; fi
}
