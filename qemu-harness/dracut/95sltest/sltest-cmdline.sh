#!/bin/sh
# root=sltest:PATH: a root image inside the initramfs.
# shellcheck disable=SC2034 # rootok is read by dracut's init
case "${root-}" in
    sltest:*) rootok=1 ;;
esac
