# Shared helpers for scripts/test, scripts/demo, qemu-harness/run and bench/.
# Sourced, not run.
# shellcheck shell=bash

# apt_get ARGS...: apt-get as root (through sudo when not root), without
# questions, waiting up to 10 minutes for the dpkg lock: on a fresh VM
# unattended-upgrades often holds it, and apt-get would otherwise give up at
# once with only its own message.
apt_get() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo > /dev/null 2>&1 || {
            echo "need root (or sudo) to run apt-get $*" >&2
            exit 1
        }
        sudo=(sudo)
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 "$@"
}

# need_packages [--for WHY] PACKAGE...: installs the Debian packages that
# are missing, saying which and what for (WHY, e.g. "the QEMU boots"); runs
# apt-get update only when something has to be installed.
need_packages() {
    local why="" missing=() p
    if [ "${1:-}" = --for ]; then
        why=" for $2"
        shift 2
    fi
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2> /dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing ${missing[*]}$why (apt-get; waits up to 10 min if another apt holds the lock)"
        apt_get update -qq
        apt_get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
    fi
}

# The project needs a Rust toolchain new enough for edition 2024 (1.85+).
need_rust() {
    if ! command -v cargo > /dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo > /dev/null 2>&1; then
        echo "cargo not found: install Rust 1.85 or newer (https://rustup.rs) and retry" >&2
        exit 1
    fi
    local v
    v=$(rustc --version | awk '{print $2}')
    if [ "$(printf '%s\n1.85.0\n' "$v" | sort -V | head -1)" != "1.85.0" ]; then
        echo "rustc $v is too old: Rust 1.85 or newer is needed" >&2
        exit 1
    fi
    rustup component list --installed 2> /dev/null | grep -q clippy || rustup component add clippy rustfmt 2> /dev/null || true
}

# cargo_target_dir: where cargo puts what it builds for this repository's
# workspace, as cargo itself says: honours CARGO_TARGET_DIR, build.target-dir
# in a cargo config, and the default ./target. Needs cargo (need_rust), and
# jq or python3 to read its answer.
cargo_target_dir() {
    local dir json out
    dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    json=$(cd "$dir" && cargo metadata --format-version 1 --no-deps) || return 1
    if command -v jq > /dev/null 2>&1; then
        out=$(jq -r .target_directory <<< "$json")
    else
        out=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' <<< "$json")
    fi
    if [ -z "$out" ] || [ "$out" = null ]; then
        echo "cargo metadata did not name a target directory" >&2
        return 1
    fi
    echo "$out"
}

# xor_byte FILE OFFSET: changes the byte at OFFSET (from the start) by
# XOR-ing it with 0xa5. Writing a constant instead would leave a byte that
# already held that constant unchanged, and a "tampered" file intact.
xor_byte() {
    local size old
    size=$(stat -c %s "$1") || return 1
    if [ "$2" -lt 0 ] || [ "$2" -ge "$size" ]; then
        echo "xor_byte: offset $2 is outside $1 ($size bytes)" >&2
        return 1
    fi
    old=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' \n')
    printf '%b' "\\0$(printf '%03o' $((old ^ 0xa5)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# static_release_build: the static release loader, statelessctl and
# stateless-node (glibc static-pie: the loader runs in an initramfs with no
# libraries; docs/qemu-notes) in cargo's target directory under
# x86_64-unknown-linux-gnu/release. One command line for qemu-harness/run and
# scripts/package, so that one build serves both. SOURCE_DATE_EPOCH is kept
# out: ring's build script reruns when it changes, and with it every crate
# above ring (a full LTO build of the three binaries), while the binaries
# do not depend on it.
static_release_build() {
    env -u SOURCE_DATE_EPOCH RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release \
        --target x86_64-unknown-linux-gnu -p stateless-loader -p statelessctl -p stateless-node
}
