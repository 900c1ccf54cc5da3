# srv: the server is found through DNS SRV. dnsmasq on the host's 127.0.0.1
# answers for lab.test: priority 10 is cfg1.lab.test on a port where nothing
# listens, priority 20 is cfg2.lab.test, nginx with https. The search domain
# comes from QEMU's DHCP (domainname=lab.test); the name server is the host's
# dnsmasq reached through the user-mode gateway (rd.stateless.dns=10.0.2.2:PORT):
# QEMU's own DNS (10.0.2.3) forwards to the host's resolver, which does not
# know lab.test. The certificate is checked against the site CA that the
# dracut module put in the initramfs (/etc/stateless/ca.pem): no ca=, no pin=.
# shellcheck shell=bash

scenario() {
    local srv=$SDIR/srv dns_port dead_port d=$SDIR/dnsmasq
    mkdir -p "$srv" "$d"
    make_bundle "$srv/v1/nodes/$NODE_UUID/bundle" 2 "srv generation 2" --key "$WORK/site/site.key"
    start_nginx cfg2 "$srv" tls
    dead_port=$(free_port)
    dns_port=$(free_port)
    dnsmasq --conf-file=/dev/null --no-resolv --no-hosts --listen-address=127.0.0.1 --bind-interfaces \
        --port="$dns_port" --user=root --pid-file="$d/dnsmasq.pid" --log-facility="$d/dnsmasq.log" \
        --log-queries \
        --srv-host="_stateless._tcp.lab.test,cfg1.lab.test,$dead_port,10,0" \
        --srv-host="_stateless._tcp.lab.test,cfg2.lab.test,$NGINX_PORT,20,0" \
        --host-record="cfg1.lab.test,$HOST_FROM_GUEST" --host-record="cfg2.lab.test,$HOST_FROM_GUEST"
    PIDFILES+=("$d/dnsmasq.pid")
    embed_key
    local cmdline
    cmdline="$(base_cmdline) root=/dev/vda ro rd.skipfsck rd.stateless.overlay=1 rd.stateless.dns=$HOST_FROM_GUEST:$dns_port"
    set_net domainname=lab.test
    boot boot1 -kernel "$KERNEL" -initrd "$SDIR/initrd-key.img" -append "$cmdline" \
        -drive "file=$WORK/root.img,format=raw,if=virtio,snapshot=on" "${NET[@]}"
    expect_applied server "srv generation 2"
    expect "server" "$(status_field .server | sed 's|/v1/.*||')" "https://cfg2.lab.test:$NGINX_PORT"
    # The priority-10 target was tried first and refused the connection.
    expect "first attempt" "$(status_field '.attempts[0]' | sed 's|/v1/.*||')" "https://cfg1.lab.test:$dead_port"
    expect_console "stateless: .*applied generation 2 from https://cfg2.lab.test:$NGINX_PORT" "loader console line"
    TIMES="loader $(loader_seconds) s, boot $BOOT_SECONDS s"
}
