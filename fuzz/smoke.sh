#!/usr/bin/env bash
# Smoke-fuzzes every target for a bounded time.
#
#   fuzz/smoke.sh                     # 20 s per target
#   FUZZ_SECONDS=300 fuzz/smoke.sh    # longer
#   FUZZ_REPLAY_ONLY=1 fuzz/smoke.sh  # no cargo-fuzz: replay the seeds only
#
# Seeds fuzz/corpus/<target>/ from tests/vectors (fuzz/corpus is not
# committed), builds the targets with cargo-fuzz (AddressSanitizer), runs each
# for FUZZ_SECONDS, and exits non-zero if any target crashed; the crashing
# input is left in fuzz/artifacts/<target>/ and replays with
#   cargo run --release --no-default-features --manifest-path fuzz/Cargo.toml --bin replay -- TARGET FILE
#
# Only a stable toolchain is needed: cargo-fuzz passes nightly-only -Z flags
# (sanitizer, coverage), which RUSTC_BOOTSTRAP=1 makes stable rustc accept.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
TARGETS=(header_parse stream_decrypt bundle_open tar_extract keys_sealed keys_cpio keys_usb keys_tpm_response)
MANIFEST=fuzz/Cargo.toml
start=$SECONDS

echo "== seeding fuzz/corpus from tests/vectors"
cargo run --quiet --release --no-default-features --manifest-path "$MANIFEST" --bin seed_corpora -- \
    tests/vectors fuzz/corpus

echo "== replaying the corpora without libFuzzer"
cargo run --quiet --release --no-default-features --manifest-path "$MANIFEST" --bin replay -- all fuzz/corpus

if [[ "${FUZZ_REPLAY_ONLY:-0}" != 0 ]]; then
    echo "== done in $((SECONDS - start)) s (replay only)"
    exit 0
fi

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

echo "== building the fuzz targets"
cargo fuzz build

failed=()
for t in "${TARGETS[@]}"; do
    echo "== fuzzing $t for ${FUZZ_SECONDS} s"
    if ! cargo fuzz run "$t" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=30 -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1; then
        failed+=("$t")
    fi
done

echo "== done in $((SECONDS - start)) s"
if ((${#failed[@]})); then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
