# fleet: a site tree (default + group + node layers and one plugin), built
# by `statelessctl site build` into a data directory, signed, each layer
# sealed with its own derived key, served by nginx, and booted into the
# Debian root through the systemd initramfs. After switch-root the guest
# reports what the stack's files and merged model did: the user and its
# key, the plugin's service enabled and active, the sysctl value and the
# module in effect, the nftables rules loaded, the sshd_config edit, the
# plugin registry, the templated hostname, a per-node template, and the
# node's file overriding the group's overriding the default's.
# shellcheck shell=bash

fleet_site() {
    local site=$1
    mkdir -p "$site/default/files/etc/sltest" "$site/groups/rack7/files/etc/sltest" \
        "$site/nodes/$NODE_UUID/files/etc/sltest" "$site/plugins/acme-agent/files/opt/acme/acme-agent/systemd"
    cat > "$site/site.toml" << TOML
[vars]
domain = "fleet.test"

[defaults]
plugins = ["acme-agent"]

[groups.rack7]
vars = { ntp = "10.0.7.1" }

[nodes."$NODE_UUID"]
groups = ["rack7"]
vars = { role = "compute" }
TOML
    # Which layer wins: a (default, group), b (default), c (all three).
    echo default > "$site/default/files/etc/sltest/layered-a"
    echo default > "$site/default/files/etc/sltest/layered-b"
    echo default > "$site/default/files/etc/sltest/layered-c"
    echo group > "$site/groups/rack7/files/etc/sltest/layered-a"
    echo group > "$site/groups/rack7/files/etc/sltest/layered-c"
    echo node > "$site/nodes/$NODE_UUID/files/etc/sltest/layered-c"
    echo "fleet generation" > "$site/default/files/etc/sltest/fleet"
    echo "fleet stack" > "$site/nodes/$NODE_UUID/files/etc/sltest/marker"
    # A default-layer template that uses per-node values: per-node output.
    echo 'node {{ node }} is {{ role }}, ntp {{ ntp }}' > "$site/default/files/etc/sltest/motd.tmpl"
    cat > "$site/default/model.toml" << 'TOML'
hostname = "fleet-{{ role }}.{{ domain }}"

[services]
enable = ["nftables.service"]

[sysctl]
"net.ipv4.ip_forward" = "1"

[firewall]
allow = ["tcp/22"]

[[edits]]
file = "/etc/ssh/sshd_config"
set = { PermitRootLogin = "no" }
TOML
    cat > "$site/groups/rack7/model.toml" << 'TOML'
[modules]
load = ["dummy"]

[firewall]
allow = ["udp/123"]
TOML
    cat > "$site/nodes/$NODE_UUID/model.toml" << 'TOML'
[[users]]
name = "alice"
uid = 2001
shell = "/bin/bash"
locked = true
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIr1fleettestkeynotarealkey0000000000000 alice@fleet.test"]
TOML
    cat > "$site/plugins/acme-agent/plugin.toml" << 'TOML'
name = "acme-agent"
vendor = "acme"
version = "1.2.3"
TOML
    cat > "$site/plugins/acme-agent/files/opt/acme/acme-agent/systemd/acme-agent.service" << 'UNIT'
[Unit]
Description=Acme agent (a plugin's service)

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/touch /run/acme-agent-ran

[Install]
WantedBy=multi-user.target
UNIT
    cat > "$site/plugins/acme-agent/model.toml" << 'TOML'
[services]
enable = ["acme-agent.service"]
TOML
}

scenario() {
    local site=$SDIR/site data=$SDIR/data keys=$SDIR/keys cmdline
    build_debian_root
    build_initramfs systemd
    fleet_site "$site"
    mkdir -p "$keys" "$data"
    install -m 0600 "$WORK/site/site.key" "$keys/site.key"
    "$CTL" key new-signing -o "$keys/publisher.sign" > /dev/null
    "$CTL" key pub "$keys/publisher.sign" -o "$keys/publisher.pub" > /dev/null
    "$CTL" site check "$site" > "$SDIR/site-check.log" 2>&1 || FAILURES+=("site check: $(head -1 "$SDIR/site-check.log")")
    "$CTL" site build "$site" --keys "$keys" --sign "$keys/publisher.sign" --data "$data" > "$SDIR/site-build.log" 2>&1 \
        || FAILURES+=("site build: $(tail -1 "$SDIR/site-build.log")")
    # The node holds only its own, its group's and the default key.
    "$CTL" key derive --site "$keys/site.key" --node "$NODE_UUID" -o "$keys/node.key" > /dev/null
    "$CTL" key derive --site "$keys/site.key" --group rack7 -o "$keys/rack7.key" > /dev/null
    "$CTL" key derive --site "$keys/site.key" --default -o "$keys/default.key" > /dev/null
    "$CTL" key initramfs --initrd "$WORK/initrd-systemd.img" -o "$SDIR/initrd-fleet.img" \
        --key "$keys/node.key" --key "$keys/rack7.key" --key "$keys/default.key" --pubkey "$keys/publisher.pub" > /dev/null
    start_nginx cfg "$data" tls
    qemu-img create -q -f qcow2 -b "$WORK/debian.img" -F raw "$SDIR/root.qcow2"
    cmdline="$(base_cmdline) root=/dev/vda rw rd.stateless.server=https://$HOST_FROM_GUEST:$NGINX_PORT"
    set_net
    boot boot1 -kernel "$KERNEL" -initrd "$SDIR/initrd-fleet.img" -append "$cmdline" \
        -drive "file=$SDIR/root.qcow2,format=qcow2,if=virtio" "${NET[@]}"
    expect "booted" "$(booted)" "yes"
    expect "result" "$(status_field .result)" "applied"
    expect "layers applied" "$(status_field '[.layers[].target] | join(",")')" \
        "default,plugin:acme-agent,group:rack7,node:$NODE_UUID"
    expect "marker file" "$(marker MARKER)" "fleet stack"
    expect "layer order" "$(marker FLEET-LAYERS)" "group default node "
    expect "per-node template" "$(marker FLEET-MOTD)" "node $NODE_UUID is compute, ntp 10.0.7.1"
    expect "user" "$(marker FLEET-USER)" "alice:2001:/home/alice:/bin/bash"
    expect "authorized_keys" "$(marker FLEET-KEY)" "alice 600 alice@fleet.test"
    expect "plugin service" "$(marker FLEET-AGENT)" "enabled active"
    expect "plugin service ran" "$(marker FLEET-AGENTRAN)" "yes"
    expect "sysctl" "$(marker FLEET-SYSCTL)" "1"
    expect "module" "$(marker FLEET-MODULE)" "loaded"
    expect "nftables rules" "$(marker FLEET-NFT)" "tcpdport22,udpdport123,"
    expect "sshd_config edit" "$(marker FLEET-SSHD)" "PermitRootLogin no,"
    expect "plugin registry" "$(marker FLEET-PLUGINS | jq -r '.plugins[] | "\(.vendor)/\(.name) \(.version) \(.state)"' 2> /dev/null)" \
        "acme/acme-agent 1.2.3 installed"
    expect "templated hostname" "$(marker FLEET-HOSTNAME)" "fleet-compute.fleet.test"
    expect "layer metadata" "$(marker FLEET-META)" "absent"
    TIMES="loader $(loader_seconds) s, boot $BOOT_SECONDS s, $(status_field '.layers | length') layers"
    rm -f "$SDIR/root.qcow2"
}
