#!/bin/sh
# Asks dracut for the network unless the loader will not use it:
# rd.stateless.timeout=0 (cache only), or every rd.stateless.server= a
# local medium (media:LABEL, an air-gapped site). Written to
# /etc/cmdline.d, which dracut reads before /proc/cmdline, so an
# rd.neednet= given on the kernel command line still wins.

type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

# only_media LIST: true when LIST (comma separated) is not empty and every
# item is media:...
only_media() {
    [ -n "$1" ] || return 1
    _rest=$1
    while [ -n "$_rest" ]; do
        _item=${_rest%%,*}
        case $_item in
            media:*) ;;
            *) return 1 ;;
        esac
        case $_rest in
            *,*) _rest=${_rest#*,} ;;
            *) _rest="" ;;
        esac
    done
    return 0
}

if [ "$(getarg rd.stateless.timeout=)" = "0" ]; then
    info "stateless: rd.stateless.timeout=0: not asking for the network"
elif only_media "$(getarg rd.stateless.server=)"; then
    info "stateless: every rd.stateless.server is a local medium: not asking for the network"
else
    mkdir -p /etc/cmdline.d
    echo "rd.neednet=1" > /etc/cmdline.d/90stateless-neednet.conf
fi
