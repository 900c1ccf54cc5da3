# Generates a deterministic /etc-like tree of plausible configuration files.
#
#   awk -v root=DIR -v count=1000 -v seed=20240601 -f gen-configs.awk
#
# The pseudo-random generator is our own (Park–Miller, exact in doubles), so
# the same seed gives the same bytes under mawk, gawk and busybox awk. Each
# file gets a size drawn log-uniformly from 100 B to 8 KiB and is filled with
# lines in the format of its directory (key=value, ini, yaml, systemd units,
# nginx blocks, udev rules, cron, ...) from a fixed vocabulary, with the
# comments real configs are full of. Nothing is read from the host's /etc.
#
# Creates the directories and files, and prints "file MODE PATH" and
# "link TARGET PATH" lines for the caller to set modes and make symlinks
# (awk has no chmod or symlink).

function rnd() { state = (state * 16807) % 2147483647; return state / 2147483647 }
function ri(lo, hi) { return lo + int(rnd() * (hi - lo + 1)) }
function pick(arr, n) { return arr[ri(1, n)] }
function w() { return pick(words, nwords) }
function ident() { return (rnd() < 0.5) ? w() "_" w() : w() }
function dotted() { return w() "." w() "." w() }
function host() { return w() "-" ri(1, 64) "." pick(domains, ndomains) }
function ip() { return "10." ri(0, 255) "." ri(0, 255) "." ri(1, 254) }
function upath() { return "/" pick(roots, nroots) "/" w() ((rnd() < 0.5) ? "/" w() : "") }
function dur() { return ri(1, 600) pick(units, nunits) }
function value(   r) {
    r = rnd()
    if (r < 0.22) return ri(0, 9) ? ri(1, 65535) : 0
    if (r < 0.36) return pick(bools, nbools)
    if (r < 0.50) return upath()
    if (r < 0.60) return host()
    if (r < 0.68) return ip() ((rnd() < 0.3) ? ":" ri(1024, 65535) : "")
    if (r < 0.78) return dur()
    if (r < 0.90) return w()
    return "\"" w() " " w() " " w() "\""
}
function comment(pfx,   n, s, i) {
    n = ri(4, 14)
    s = pfx
    for (i = 0; i < n; i++) s = s " " w()
    return s
}

# One line (or a few) of the given format.
function line(fmt,   r, s, i) {
    r = rnd()
    if (fmt == "kv") {
        if (r < 0.25) return comment("#")
        if (r < 0.30) return ""
        return toupper(w()) "_" toupper(w()) "=" ((rnd() < 0.4) ? "\"" value() "\"" : value())
    }
    if (fmt == "sysctl") {
        if (r < 0.3) return comment("#")
        return pick(sysctlpfx, nsysctlpfx) "." w() "_" w() " = " ri(0, 65536)
    }
    if (fmt == "ini") {
        if (r < 0.10) return "\n[" w() ((rnd() < 0.3) ? " \"" w() "\"" : "") "]"
        if (r < 0.28) return comment(rnd() < 0.5 ? "#" : ";")
        return ident() " = " value()
    }
    if (fmt == "unit") {
        if (r < 0.08) return "\n[" pick(unitsec, nunitsec) "]"
        if (r < 0.20) return comment("#")
        if (r < 0.35) return pick(unitkeys, nunitkeys) "=" upath() " --" w() "=" value()
        return pick(unitkeys, nunitkeys) "=" value()
    }
    if (fmt == "yaml") {
        if (r < 0.12) return comment("#")
        if (r < 0.25) return ident() ":"
        if (r < 0.45) return "  - " ident() ": " value()
        if (r < 0.70) return "  " ident() ": " value()
        return "    " ident() ": " value()
    }
    if (fmt == "nginx") {
        if (r < 0.06) return pick(ngblocks, nngblocks) " " upath() " {"
        if (r < 0.12) return "}"
        if (r < 0.25) return comment("    #")
        return "    " ident() " " value() ";"
    }
    if (fmt == "sshd") {
        if (r < 0.35) return comment("#")
        return pick(sshkeys, nsshkeys) " " value()
    }
    if (fmt == "modprobe") {
        if (r < 0.3) return comment("#")
        if (r < 0.45) return "blacklist " w() "_" w()
        return "options " w() "_" w() " " w() "=" ri(0, 4096) " " w() "=" pick(bools, nbools)
    }
    if (fmt == "limits") {
        if (r < 0.3) return comment("#")
        return sprintf("%-12s %-6s %-12s %s", (rnd() < 0.3) ? "*" : "@" w(), (rnd() < 0.5) ? "soft" : "hard", pick(limitkeys, nlimitkeys), ri(1, 1048576))
    }
    if (fmt == "apt") {
        if (r < 0.3) return comment("#")
        return "deb [arch=amd64 signed-by=/usr/share/keyrings/" w() ".gpg] http://" host() "/" w() " " pick(suites, nsuites) " main " w()
    }
    if (fmt == "aptconf") {
        if (r < 0.2) return comment("//")
        return "APT::" toupper(substr(w(), 1, 1)) w() "::" w() " \"" value() "\";"
    }
    if (fmt == "logrotate") {
        if (r < 0.1) return upath() "/*.log {"
        if (r < 0.18) return "}"
        return "    " pick(lrkeys, nlrkeys) ((rnd() < 0.5) ? " " ri(1, 52) : "")
    }
    if (fmt == "cron") {
        if (r < 0.25) return comment("#")
        return ri(0, 59) " " ((rnd() < 0.5) ? "*" : ri(0, 23)) " * * " ((rnd() < 0.7) ? "*" : ri(0, 6)) " root " upath() " --" w() " >/dev/null 2>&1"
    }
    if (fmt == "udev") {
        if (r < 0.25) return comment("#")
        return "SUBSYSTEM==\"" w() "\", ATTR{" w() "}==\"" ri(0, 65535) "\", " pick(udevact, nudevact) "=\"" w() "-" ri(0, 99) "\""
    }
    if (fmt == "tmpfiles") {
        if (r < 0.3) return comment("#")
        return pick(tftypes, ntftypes) " " upath() " 0" ri(6, 7) ri(0, 5) ri(0, 5) " " w() " " w() " " ((rnd() < 0.5) ? "-" : dur())
    }
    if (fmt == "audit") {
        if (r < 0.3) return comment("#")
        return "-w " upath() " -p " pick(perms, nperms) " -k " w() "_" w()
    }
    if (fmt == "sh") {
        if (r < 0.25) return comment("#")
        if (r < 0.40) return "if [ -" pick(tests, ntests) " " upath() " ]; then"
        if (r < 0.50) return "fi"
        if (r < 0.75) return "export " toupper(w()) "_" toupper(w()) "=\"${" toupper(w()) ":-" value() "}\""
        return "    " w() " --" w() " " value() " || true"
    }
    return comment("#")
}

function mkfile(dir, fmt, ext, mode,   name, path, size, s, l, n) {
    do {
        name = w() ((rnd() < 0.6) ? "-" w() : "") ext
        path = dir "/" name
    } while (path in used)
    used[path] = 1
    size = int(100 * exp(rnd() * log(8192 / 100)))
    s = ""
    if (fmt == "unit") s = "[Unit]\nDescription=" w() " " w() " " w() "\n"
    else if (fmt == "sh") s = "#!/bin/sh\n"
    else if (fmt == "yaml") s = "---\n"
    while (length(s) < size) s = s line(fmt) "\n"
    s = substr(s, 1, size - 1) "\n"
    printf "%s", s > (root "/" path)
    close(root "/" path)
    print "file " mode " " path
    files[++nfiles] = path
    return path
}

function split_list(str, arr) { return split(str, arr, " ") }
# Our own fixed relative paths, so quoting them for sh is safe.
function mkdirs(dir) { if (system("mkdir -p '" root "/" dir "'") != 0) exit 1 }

BEGIN {
    if (root == "") { print "gen-configs.awk: set -v root=DIR" > "/dev/stderr"; exit 2 }
    if (count == "") count = 1000
    state = (seed == "" ? 20240601 : seed) % 2147483646 + 1

    nwords = split_list("access accept account acl action active adapter address admin agent alert alias allow api " \
        "append archive audit auth backend backlog backup balance batch bind block boot bridge buffer bundle burst " \
        "cache capacity cert chain channel check chunk client cluster codec collector compress config connect " \
        "connection console container control cookie core count cpu cron daemon data database deadline debug " \
        "default delay deny device dhcp direct disk dns domain driver drop dump edge enable endpoint entry " \
        "environment error event exec expire export factor failover fallback feature fetch file filter flag " \
        "flush format forward frame gateway generation global group handler header health heartbeat history " \
        "host hostname http idle image include index inet init input instance interface interval journal keepalive " \
        "kernel key label lease level limit link listen load local lock log logger loop manager mapping master " \
        "max memory metric min mirror mode module monitor mount mtu name namespace network node notify ntp " \
        "offset option output owner packet page parallel path peer period pid policy pool port prefix priority " \
        "probe process profile protocol proxy queue quota rate read realm record redirect refresh region registry " \
        "relay reload remote replica report request reserve resolver restart retry ring role root rotate route " \
        "rule runtime sample scheduler scope secure segment selector server service session shard shell signal " \
        "size slot socket source spool stack stage state static status storage stream subnet swap sync syslog " \
        "system table target task template tenant thread threshold throttle timeout timer token topic trace " \
        "transport trust tunnel type update upstream user vault verify version volume wait watch weight window " \
        "worker write zone", words)
    ndomains = split_list("site.example internal.example corp.example lab.example", domains)
    nroots = split_list("etc var/lib var/log run usr/lib usr/share opt srv var/cache", roots)
    nunits = split_list("s s s ms m m h d", units)
    nbools = split_list("yes no true false on off 1 0", bools)
    nsysctlpfx = split_list("net.ipv4 net.ipv6 net.core vm kernel fs", sysctlpfx)
    nunitsec = split_list("Unit Service Install Socket Timer Mount", unitsec)
    nunitkeys = split_list("ExecStart ExecStartPre ExecReload After Before Wants Requires WantedBy Type Restart " \
        "RestartSec User Group Environment EnvironmentFile LimitNOFILE ProtectSystem ProtectHome PrivateTmp " \
        "NoNewPrivileges ReadWritePaths TimeoutStartSec Nice CPUQuota MemoryMax", unitkeys)
    nngblocks = split_list("location server upstream map if", ngblocks)
    nsshkeys = split_list("PermitRootLogin PasswordAuthentication PubkeyAuthentication AllowGroups AllowUsers " \
        "ClientAliveInterval ClientAliveCountMax MaxAuthTries MaxSessions X11Forwarding AllowTcpForwarding " \
        "Banner LogLevel AuthorizedKeysFile UsePAM Subsystem", sshkeys)
    nlimitkeys = split_list("nofile nproc core memlock stack as cpu rtprio", limitkeys)
    nsuites = split_list("bookworm bookworm-updates bookworm-security stable", suites)
    nlrkeys = split_list("daily weekly rotate compress delaycompress missingok notifempty copytruncate " \
        "maxsize minsize create sharedscripts dateext", lrkeys)
    nudevact = split_list("NAME SYMLINK+ RUN+ TAG+ ENV{ID_NAME} GROUP MODE OWNER", udevact)
    ntftypes = split_list("d D f L z Z e", tftypes)
    nperms = split_list("wa rwa x wax r", perms)
    ntests = split_list("f d x r s e", tests)

    # directory, format, extension, mode, weight (share of the files)
    nd = 0
    d[++nd] = "etc/default kv - 0644 4"
    d[++nd] = "etc/sysconfig kv - 0644 3"
    d[++nd] = "etc/environment.d kv .conf 0644 2"
    d[++nd] = "etc/systemd/system unit .service 0644 10"
    d[++nd] = "etc/systemd/system/timers unit .timer 0644 2"
    d[++nd] = "etc/systemd/network ini .network 0644 3"
    d[++nd] = "etc/systemd/journald.conf.d ini .conf 0644 1"
    d[++nd] = "etc/NetworkManager/system-connections ini .nmconnection 0600 3"
    d[++nd] = "etc/sysctl.d sysctl .conf 0644 3"
    d[++nd] = "etc/modprobe.d modprobe .conf 0644 2"
    d[++nd] = "etc/security/limits.d limits .conf 0644 2"
    d[++nd] = "etc/ssh/sshd_config.d sshd .conf 0600 2"
    d[++nd] = "etc/nginx/conf.d nginx .conf 0644 5"
    d[++nd] = "etc/nginx/sites-available nginx - 0644 4"
    d[++nd] = "etc/apt/sources.list.d apt .list 0644 2"
    d[++nd] = "etc/apt/apt.conf.d aptconf - 0644 2"
    d[++nd] = "etc/logrotate.d logrotate - 0644 4"
    d[++nd] = "etc/cron.d cron - 0644 3"
    d[++nd] = "etc/udev/rules.d udev .rules 0644 3"
    d[++nd] = "etc/tmpfiles.d tmpfiles .conf 0644 2"
    d[++nd] = "etc/audit/rules.d audit .rules 0640 2"
    d[++nd] = "etc/profile.d sh .sh 0644 3"
    d[++nd] = "etc/containers/registries.conf.d ini .conf 0644 2"
    d[++nd] = "etc/kubernetes/manifests yaml .yaml 0600 4"
    d[++nd] = "etc/prometheus/rules yaml .yml 0644 4"
    d[++nd] = "etc/app/api/conf.d yaml .yaml 0640 5"
    d[++nd] = "etc/app/api ini .ini 0640 3"
    d[++nd] = "etc/app/worker/conf.d yaml .yaml 0640 5"
    d[++nd] = "etc/app/worker kv .env 0600 3"
    d[++nd] = "etc/app/gateway/routes yaml .yaml 0644 5"
    d[++nd] = "etc/app/gateway ini .toml 0644 2"
    d[++nd] = "usr/local/bin sh - 0755 3"
    d[++nd] = "usr/local/lib/site sh .sh 0644 2"
    wsum = 0
    for (i = 1; i <= nd; i++) { split(d[i], f, " "); wsum += f[5]; mkdirs(f[1]) }
    mkdirs("etc/systemd/system/multi-user.target.wants")

    for (k = 0; k < count; k++) {
        r = rnd() * wsum
        for (i = 1; i < nd; i++) { split(d[i], f, " "); r -= f[5]; if (r < 0) break }
        split(d[i], f, " ")
        p = mkfile(f[1], f[2], (f[3] == "-") ? "" : f[3], f[4])
        if (f[3] == ".service" && rnd() < 0.6) {
            n = split(p, parts, "/")
            print "link ../" parts[n] " etc/systemd/system/multi-user.target.wants/" parts[n]
        }
    }
}
