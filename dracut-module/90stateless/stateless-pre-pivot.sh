#!/bin/sh
# Shell-init dracut: runs the loader once the root is mounted on $NEWROOT,
# just before switch_root. This file is sourced by init, so emergency_shell
# here really stops the boot (rd.shell=0: dracut halts, or panics when the
# initramfs has no halt).

type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

if ! /usr/sbin/stateless-run --sysroot "${NEWROOT:-/sysroot}"; then
    emergency_shell -n stateless "stateless: no bundle applied; not switching into the root (reason above)"
fi
