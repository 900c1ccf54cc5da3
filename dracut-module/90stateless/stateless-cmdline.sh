#!/bin/sh
# Asks dracut for the network unless the loader will not use it
# (rd.stateless.timeout=0: cache only). Written to /etc/cmdline.d, which
# dracut reads before /proc/cmdline, so an rd.neednet= given on the kernel
# command line still wins.

type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

if [ "$(getarg rd.stateless.timeout=)" = "0" ]; then
    info "stateless: rd.stateless.timeout=0: not asking for the network"
else
    mkdir -p /etc/cmdline.d
    echo "rd.neednet=1" > /etc/cmdline.d/90stateless-neednet.conf
fi
