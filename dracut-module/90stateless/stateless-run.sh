#!/bin/sh
# Runs stateless-loader and maps its exit status to the boot's next step:
#   0 applied, 11 onfail=continue: boot on
#   12 onfail=reboot, 13 onfail=poweroff
#   10 onfail=emergency, 1 bad command line, anything else: emergency
# Exits 0 when the boot goes on, else with the loader's status (the caller
# stops the boot). The loader has already printed the reason on the console.

type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

/usr/sbin/stateless-loader "$@"
rc=$?

stateless_action() {
    if [ -n "$DRACUT_SYSTEMD" ] || [ -d /run/systemd/system ]; then
        systemctl --no-block "$1"
    else
        # Shell-init dracut has no service manager to ask, and often no
        # reboot or poweroff binary: ask the kernel directly.
        sync
        if [ "$1" = reboot ]; then
            echo b > /proc/sysrq-trigger
        else
            echo o > /proc/sysrq-trigger
        fi
    fi
}

case $rc in
    0) ;;
    11) warn "stateless: no bundle applied, booting the root as it is (onfail=continue)" ;;
    12)
        warn "stateless: no bundle applied, rebooting (onfail=reboot)"
        stateless_action reboot
        ;;
    13)
        warn "stateless: no bundle applied, powering off (onfail=poweroff)"
        stateless_action poweroff
        ;;
    *)
        # The caller stops the boot: under systemd the unit fails and
        # OnFailure= starts emergency.target; the shell-init hook calls
        # emergency_shell in init's own context (from here it would only end
        # this script and the boot would go on).
        exit "$rc"
        ;;
esac
exit 0
