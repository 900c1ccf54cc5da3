# Shared functions of the QEMU harness. Sourced by qemu-harness/run.
# shellcheck shell=bash

HARNESS=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO=$(cd "$HARNESS/.." && pwd)
WORK=${SLTEST_WORK:-$HARNESS/work}
# TCG by default: nested KVM hangs on these machines (docs/qemu-notes).
# SLTEST_ACCEL=kvm opts in where it works.
ACCEL=${SLTEST_ACCEL:-tcg}
# Watchdog per boot, seconds: every boot ends.
BOOT_TIMEOUT=${SLTEST_BOOT_TIMEOUT:-300}
# Where cargo puts the static builds: set by set_target_paths once cargo is
# known to be there (CARGO_TARGET_DIR and cargo configs are honoured).
TARGET_DIR=""
LOADER=""
CTL=""
# The debootstrapped Debian root (build_debian_root); the name carries its
# package set, so a tree cached with an older list is not reused.
DEBIAN_TREE=$WORK/debian-root-2
# The guest reaches the host's 127.0.0.1 through QEMU's user-mode gateway.
HOST_FROM_GUEST=10.0.2.2
KERNEL=""

log() { echo "  ... $*" >&2; }
die() {
    echo "qemu-harness: $*" >&2
    exit 1
}

# --- shared builds -----------------------------------------------------------

# set_target_paths: TARGET_DIR, LOADER and CTL from cargo's own answer, so a
# caller's CARGO_TARGET_DIR is where the binaries are looked for, as it is
# where cargo builds them.
set_target_paths() {
    local dir
    dir=$(cargo_target_dir) || die "cannot ask cargo for its target directory (cargo metadata failed)"
    TARGET_DIR=$dir/x86_64-unknown-linux-gnu/release
    LOADER=$TARGET_DIR/stateless-loader
    CTL=$TARGET_DIR/statelessctl
}

build_loader() {
    if [ "${SLTEST_NO_BUILD:-0}" = 1 ] && [ -x "$LOADER" ] && [ -x "$CTL" ]; then
        log "SLTEST_NO_BUILD=1: using the loader and statelessctl already built"
        return
    fi
    log "building the static loader and statelessctl"
    (cd "$REPO" && static_release_build)
    if [ ! -x "$LOADER" ] || [ ! -x "$CTL" ]; then
        die "cargo built, but $LOADER or $CTL is not there"
    fi
}

# The newest kernel from Debian's linux-image-amd64.
kernel_version() {
    local v
    v=$(find /boot -maxdepth 1 -name 'vmlinuz-*-amd64' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -1)
    if [ -z "$v" ] || [ ! -d "/lib/modules/$v" ]; then
        die "no kernel in /boot (apt-get install linux-image-amd64)"
    fi
    echo "$v"
}

# A private dracut base directory: the host's modules plus ours, so that
# nothing is installed into /usr/lib/dracut.
dracut_base() {
    local base=$WORK/dracut-base
    rm -rf "$base"
    mkdir -p "$base"
    cp -as /usr/lib/dracut/. "$base/"
    rm -rf "$base/modules.d/90stateless" "$base/modules.d/95sltest"
    cp -r "$REPO/dracut-module/90stateless" "$HARNESS/dracut/95sltest" "$base/modules.d/"
    echo "$base"
}

# build_initramfs shell|systemd: $WORK/initrd-FLAVOUR.img, rebuilt when the
# module, the loader or the kernel changed.
build_initramfs() {
    local flavour=$1 out=$WORK/initrd-$1.img kver stamp modules omit
    kver=$(kernel_version)
    stamp=$(cat "$LOADER" "$REPO"/dracut-module/90stateless/* "$HARNESS"/dracut/95sltest/* "$WORK/site/ca.pem" \
        | sha256sum | cut -c1-16)-$kver-$flavour
    if [ -f "$out" ] && [ "$(cat "$out.stamp" 2> /dev/null)" = "$stamp" ]; then
        return
    fi
    log "building the $flavour initramfs (dracut, about a minute)"
    mkdir -p "$WORK/empty-confdir"
    if [ "$flavour" = systemd ]; then
        modules="systemd systemd-initrd dracut-systemd base rootfs-block kernel-modules network-legacy network kernel-network-modules stateless"
        omit=""
    else
        modules="base rootfs-block kernel-modules network-legacy network kernel-network-modules stateless sltest"
        omit="systemd systemd-initrd systemd-networkd"
    fi
    local base
    base=$(dracut_base)
    STATELESS_LOADER=$LOADER STATELESS_CA=$WORK/site/ca.pem STATELESS_KEYS_DIR=$WORK/no-keys \
        dracutbasedir=$base dracut --quiet --force --conf /dev/null --confdir "$WORK/empty-confdir" \
        --no-hostonly --kver "$kver" -m "$modules" ${omit:+--omit "$omit"} \
        --add-drivers "virtio_blk virtio_pci virtio_net ext4 squashfs loop overlay" \
        --compress zstd "$out.tmp" > "$WORK/dracut-$flavour.log" 2>&1 \
        || die "dracut failed: see $WORK/dracut-$flavour.log"
    mv "$out.tmp" "$out"
    echo "$stamp" > "$out.stamp"
}

# Size of what the stateless module adds to an initramfs (uncompressed).
module_size() {
    du -cb "$LOADER" "$REPO"/dracut-module/90stateless/* | tail -1 | cut -f1
}

# The small root: busybox, an init that reports SLTEST-* lines, a file the
# bundle deletes. As an ext4 image and as a squashfs.
build_root() {
    local tree=$WORK/root-tree
    if [ -f "$WORK/root.img" ] && [ "$WORK/root.img" -nt "$HARNESS/lib/guest-init" ] && [ "$WORK/root.img" -nt "$CTL" ]; then
        return
    fi
    log "building the small root image"
    rm -rf "$tree"
    mkdir -p "$tree"/{bin,sbin,etc/sltest,proc,sys,dev,run,tmp,root,mnt}
    cp /bin/busybox "$tree/bin/busybox"
    # For the tpm-key scenario's enrolment boot (static, like the loader).
    cp "$CTL" "$tree/bin/statelessctl"
    local app
    for app in sh cat echo awk tr cut mount umount poweroff reboot sync ls sleep dmesg timeout sha256sum; do
        ln -s busybox "$tree/bin/$app"
    done
    install -m 0755 "$HARNESS/lib/guest-init" "$tree/sbin/init"
    # getcap, for the image-layer scenario's file capability check; it is
    # dynamically linked, so its libraries and loader come along.
    local gc lib
    gc=$(command -v getcap || echo /usr/sbin/getcap)
    if [ -x "$gc" ]; then
        install -D -m 0755 "$gc" "$tree/sbin/getcap"
        for lib in $(ldd "$gc" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
            install -D -m 0755 "$lib" "$tree$lib"
        done
    fi
    printf 'NAME="sltest"\nID=sltest\n' > "$tree/etc/os-release"
    echo "base image" > "$tree/etc/sltest/marker"
    echo "the bundle deletes this file" > "$tree/etc/sltest/delete-me"
    rm -f "$WORK/root.img" "$WORK/root.squashfs"
    mkfs.ext4 -q -L sltest-root -d "$tree" "$WORK/root.img" 48M
    mksquashfs "$tree" "$WORK/root.squashfs" -quiet -noappend -all-root > /dev/null
}

# A real Debian root (debootstrap from Debian's archive, cached in
# $DEBIAN_TREE between runs) with systemd, as an ext4 image with a
# report unit that prints SLTEST-* lines and powers off.
build_debian_root() {
    local tree=$DEBIAN_TREE img=$WORK/debian.img stamp kver
    kver=$(kernel_version)
    if [ ! -d "$tree" ]; then
        log "debootstrap of Debian bookworm with systemd (cached for later runs; a few minutes)"
        rm -rf "$tree.tmp" "$WORK/debian-root"
        debootstrap --variant=minbase --include=systemd,systemd-sysv,udev,kmod,nftables bookworm "$tree.tmp" \
            http://deb.debian.org/debian > "$WORK/debootstrap.log" 2>&1 || die "debootstrap failed: see $WORK/debootstrap.log"
        mv "$tree.tmp" "$tree"
    fi
    stamp=$( (cat "$HARNESS"/lib/debian/*; echo "$kver") | sha256sum | cut -c1-16)
    if [ -f "$img" ] && [ "$(cat "$img.stamp" 2> /dev/null)" = "$stamp" ]; then
        return
    fi
    log "building the Debian root image"
    install -m 0644 "$HARNESS/lib/debian/sltest-report.service" "$tree/etc/systemd/system/"
    install -m 0755 "$HARNESS/lib/debian/sltest-report" "$tree/usr/local/sbin/"
    mkdir -p "$tree/etc/systemd/system/multi-user.target.wants" "$tree/etc/sltest"
    ln -sf ../sltest-report.service "$tree/etc/systemd/system/multi-user.target.wants/sltest-report.service"
    # Nobody logs in on the serial console of a test machine.
    ln -sf /dev/null "$tree/etc/systemd/system/serial-getty@ttyS0.service"
    echo "base image" > "$tree/etc/sltest/marker"
    echo "the bundle deletes this file" > "$tree/etc/sltest/delete-me"
    echo sltest > "$tree/etc/hostname"
    # What a base image does to take the node model's firewall
    # (docs/site.md): its nftables.conf includes the directory.
    install -m 0755 "$HARNESS/lib/debian/nftables.conf" "$tree/etc/nftables.conf"
    mkdir -p "$tree/etc/nftables.d"
    # An sshd_config for the model's edits to change (no sshd needed).
    mkdir -p "$tree/etc/ssh"
    install -m 0644 "$HARNESS/lib/debian/sshd_config" "$tree/etc/ssh/sshd_config"
    # The booted kernel's modules the fleet scenario's model loads (dummy)
    # and its firewall needs (nf_tables and conntrack), with their
    # dependencies: the root's systemd loads them, not the initramfs.
    rm -rf "$tree/usr/lib/modules"
    local m
    for m in $(modprobe -S "$kver" --show-depends -a dummy nft_ct nf_tables | awk '$1 == "insmod" {print $2}' | sort -u); do
        install -D -m 0644 "$m" "$tree/usr$m"
    done
    cp "/lib/modules/$kver/modules.order" "/lib/modules/$kver/modules.builtin" "/lib/modules/$kver/modules.builtin.modinfo" \
        "$tree/usr/lib/modules/$kver/" 2> /dev/null || true
    depmod -b "$tree/usr" "$kver"
    rm -f "$img"
    local mb
    mb=$(($(du -sm "$tree" | cut -f1) + 256))
    mkfs.ext4 -q -L debian-root -d "$tree" "$img" "${mb}M"
    echo "$stamp" > "$img.stamp"
}

# Site material, generated on the spot (never committed): a site key, a CA
# and a server certificate for 10.0.2.2.
build_site() {
    local d=$WORK/site
    [ -f "$d/site.key" ] && [ -f "$d/ca.pem" ] && return
    log "generating the site key and CA"
    rm -rf "$d"
    mkdir -p "$d"
    "$CTL" key new -o "$d/site.key" > "$d/site.keyid"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=sltest CA" \
        -keyout "$d/ca.key.pem" -out "$d/ca.pem" 2> /dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$HOST_FROM_GUEST" \
        -keyout "$d/server.key.pem" -out "$d/server.csr" 2> /dev/null
    # SRV targets are names (srv scenario); explicit URLs use the address.
    printf 'subjectAltName=IP:%s,IP:127.0.0.1,DNS:cfg1.lab.test,DNS:cfg2.lab.test\n' "$HOST_FROM_GUEST" > "$d/ext.cnf"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key.pem" -CAcreateserial -days 30 \
        -extfile "$d/ext.cnf" -out "$d/server.pem" 2> /dev/null
    mkdir -p "$WORK/no-keys"
}

build_all() {
    mkdir -p "$WORK"
    KERNEL=/boot/vmlinuz-$(kernel_version)
    build_loader
    build_site
    build_root
    build_initramfs shell
}

# --- servers on 127.0.0.1 ----------------------------------------------------

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 20000))
        ! (echo > "/dev/tcp/127.0.0.1/$p") 2> /dev/null && echo "$p" && return
    done
}

# start_nginx NAME DOCROOT [tls]: sets NGINX_PORT; stopped by stop_servers.
start_nginx() {
    local name=$1 root=$2 tls=${3:-} d=$SDIR/nginx-$1 listen ssl=""
    mkdir -p "$d"
    NGINX_PORT=$(free_port)
    listen="127.0.0.1:$NGINX_PORT"
    if [ "$tls" = tls ]; then
        listen="$listen ssl"
        ssl="ssl_certificate $WORK/site/server.pem; ssl_certificate_key $WORK/site/server.key.pem;"
    fi
    cat > "$d/nginx.conf" << CONF
daemon on; master_process off; worker_processes 1; pid $d/nginx.pid; error_log $d/error.log;
events { worker_connections 64; }
http {
  access_log $d/access.log; sendfile on;
  client_body_temp_path $d/body; proxy_temp_path $d/proxy; fastcgi_temp_path $d/fcgi;
  uwsgi_temp_path $d/uwsgi; scgi_temp_path $d/scgi;
  default_type application/octet-stream;
  server { listen $listen; $ssl root $root; }
}
CONF
    nginx -p "$d" -c "$d/nginx.conf" 2> "$d/start.log" || die "nginx $name did not start: $(cat "$d/start.log")"
    PIDFILES+=("$d/nginx.pid")
}

# start_serve NAME DATA: the project's own server (`statelessctl serve`) on
# plain HTTP at 127.0.0.1:$SERVE_PORT over DATA, which the guest reaches as
# $HOST_FROM_GUEST. Its log is $SDIR/serve-NAME.log.
start_serve() {
    local name=$1 data=$2 log=$SDIR/serve-$1.log i
    SERVE_PORT=$(free_port)
    "$CTL" serve --data "$data" --listen "127.0.0.1:$SERVE_PORT" > "$log" 2>&1 &
    echo $! > "$SDIR/serve-$name.pid"
    PIDFILES+=("$SDIR/serve-$name.pid")
    for ((i = 0; i < 100; i++)); do
        if (exec 3<> "/dev/tcp/127.0.0.1/$SERVE_PORT") 2> /dev/null; then return 0; fi
        sleep 0.1
    done
    die "statelessctl serve $name did not start: $(tail -3 "$log")"
}

# stop_pidfile FILE: stops one server this harness started.
stop_pidfile() {
    local pid
    pid=$(cat "$1" 2> /dev/null) || return 0
    kill "$pid" 2> /dev/null || true
    rm -f "$1"
}

stop_servers() {
    local f
    for f in "${PIDFILES[@]}"; do
        stop_pidfile "$f"
    done
    PIDFILES=()
}

# --- bundles -----------------------------------------------------------------

# make_bundle OUT GENERATION MARKER [statelessctl pack options...]: a bundle
# that writes /etc/sltest/marker and deletes /etc/sltest/delete-me.
make_bundle() {
    local out=$1 gen=$2 marker=$3 tree
    shift 3
    tree=$(mktemp -d "$SDIR/tree.XXXXXX")
    mkdir -p "$tree/etc/sltest"
    echo "$marker" > "$tree/etc/sltest/marker"
    mkdir -p "$(dirname "$out")"
    "$CTL" bundle pack "$tree" -o "$out" --force --generation "$gen" --delete /etc/sltest/delete-me "$@" > /dev/null
    rm -rf "$tree"
}

# --- booting -----------------------------------------------------------------

# prepend_cpio OUT INITRD DIR: OUT is an uncompressed cpio of DIR's contents
# followed by INITRD (the kernel reads no further than the end of a
# compressed archive, so the extra files go first).
prepend_cpio() {
    (cd "$3" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) > "$1.cpio"
    cat "$1.cpio" "$2" > "$1"
    rm -f "$1.cpio"
}

# embed_key [INITRD]: $SDIR/initrd-key.img, the shell initramfs with the site
# key embedded as /etc/stateless/keys/site.key (the boot image carries the key).
embed_key() {
    local d=$SDIR/keytree
    mkdir -p "$d/etc/stateless/keys"
    install -m 0600 "$WORK/site/site.key" "$d/etc/stateless/keys/site.key"
    prepend_cpio "$SDIR/initrd-key.img" "${1:-$WORK/initrd-shell.img}" "$d"
    rm -rf "$d"
}

# boot NAME QEMU-ARGS...: one boot under the watchdog; the console goes to
# $SDIR/NAME.console. Sets BOOT_SECONDS.
boot() {
    local name=$1 start end
    shift
    local console=$SDIR/$name.console
    local accel=(-accel tcg)
    [ "$ACCEL" = kvm ] && accel=(-accel kvm -cpu host)
    start=$(date +%s.%N)
    timeout -k 5 "$BOOT_TIMEOUT" qemu-system-x86_64 "${accel[@]}" -m 1024 -smp 1 \
        -display none -vga none -monitor none -serial "file:$console" -no-reboot \
        -uuid "$NODE_UUID" "$@" > "$SDIR/$name.qemu.log" 2>&1 || true
    end=$(date +%s.%N)
    BOOT_SECONDS=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    CONSOLE=$console
}

# start_swtpm [NAME]: a software TPM 2.0 for the next boot (it ends with
# QEMU, --terminate); its state directory $SDIR/NAME (default tpm) is kept
# across boots like a real TPM's. Sets TPM_ARGS (QEMU's tpm-tis device).
start_swtpm() {
    local name=${1:-tpm}
    local sock=$SDIR/$name.sock
    mkdir -p "$SDIR/$name"
    rm -f "$sock"
    swtpm socket --tpm2 --tpmstate "dir=$SDIR/$name" --ctrl "type=unixio,path=$sock" \
        --pid "file=$SDIR/$name.pid" --log "file=$SDIR/$name.log" --terminate --daemon
    PIDFILES+=("$SDIR/$name.pid")
    TPM_ARGS=(-chardev "socket,id=chrtpm,path=$sock" -tpmdev "emulator,id=tpm0,chardev=chrtpm" -device "tpm-tis,tpmdev=tpm0")
}

# The default kernel command line of the harness.
base_cmdline() {
    echo "console=ttyS0 panic=-1 rd.shell=0 rd.emergency=poweroff rd.stateless.debug printk.devkmsg=on"
}

# marker NAME: the value of the last SLTEST-NAME line of the console.
marker() {
    grep -a -E "^SLTEST-$1( |$)" "$CONSOLE" | tail -1 | sed "s/^SLTEST-$1 \{0,1\}//" | tr -d '\r'
}

# booted: yes when the root's init ran.
booted() {
    if grep -aq '^SLTEST-BOOTED' "$CONSOLE"; then echo yes; else echo no; fi
}

# status_field JQ-FILTER: from the status.json the guest printed.
status_field() {
    marker STATUS | jq -r "$1" 2> /dev/null
}

# loader_ms: the loader's own total time from status.json.
loader_seconds() {
    local ms
    ms=$(status_field '.timings_ms[] | select(.[0] == "total") | .[1]')
    if [ -n "$ms" ]; then awk -v ms="$ms" 'BEGIN { printf "%.2f", ms / 1000 }'; else echo "?"; fi
}

# expect WHAT ACTUAL WANTED: records a failed check.
expect() {
    if [ "$2" != "$3" ]; then
        FAILURES+=("$1: got '${2}', wanted '${3}'")
    fi
}

# flip_byte FILE OFFSET-FROM-END: changes one byte of a file in place (XOR,
# so the byte always changes; see xor_byte in scripts/lib.sh).
flip_byte() {
    local size
    size=$(stat -c %s "$1")
    xor_byte "$1" $((size - $2))
}

# root_copy: a private, writable copy of the small root for this scenario.
root_copy() {
    cp --sparse=always "$WORK/root.img" "$SDIR/root.img"
    echo "$SDIR/root.img"
}

# set_net [OPTIONS]: NET=(QEMU arguments) for user-mode networking only,
# with extra -netdev user options (domainname=...) appended.
set_net() {
    NET=(-netdev "user,id=n0${1:+,$1}" -device "virtio-net-pci,netdev=n0")
}

# expect_console PATTERN WHAT: the console must show PATTERN (grep -E).
expect_console() {
    grep -aqE "$1" "$CONSOLE" || FAILURES+=("$2: console has no line matching '$1'")
}

# expect_booted: the standard checks for a boot that applied a bundle.
# expect_applied SOURCE MARKER
expect_applied() {
    expect "booted" "$(booted)" "yes"
    expect "result" "$(status_field .result)" "applied"
    expect "source" "$(status_field .source)" "$1"
    expect "marker file" "$(marker MARKER)" "$2"
    expect "deleted file" "$(marker DELETED)" "yes"
}
