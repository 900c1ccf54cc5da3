#!/usr/bin/env bash
# Smoke-fuzzes every target, reproducibly by default.
#
#   fuzz/smoke.sh                     # 4,000 runs per target, fixed seed (what CI runs)
#   FUZZ_RUNS=100000 fuzz/smoke.sh    # more runs, still the fixed seed
#   FUZZ_SECONDS=300 fuzz/smoke.sh    # a fuzzing campaign: 300 s per target, random seed
#   FUZZ_REPLAY_ONLY=1 fuzz/smoke.sh  # no cargo-fuzz: replay the seeds only
#
# Seeds fuzz/corpus/<target>/ from tests/vectors (fuzz/corpus is not
# committed), builds the targets with cargo-fuzz (AddressSanitizer), fuzzes
# each, and exits non-zero if any target crashed; the crashing input is left
# in fuzz/artifacts/<target>/ and replays with
#   cargo run --release --no-default-features --manifest-path fuzz/Cargo.toml --bin replay -- TARGET FILE
#
# The default run uses a fixed seed and a number of runs rather than a time
# limit, so that from a clean checkout it explores the same inputs on every
# machine: a test run (and CI) passes or fails for the code, not for the
# luck of the draw or the speed of the machine. Finding new bugs is the job
# of FUZZ_SECONDS campaigns, whose random seed explores further each time.
#
# Only a stable toolchain is needed: cargo-fuzz passes nightly-only -Z flags
# (sanitizer, coverage), which RUSTC_BOOTSTRAP=1 makes stable rustc accept.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
FUZZ_SECONDS="${FUZZ_SECONDS:-}"
FUZZ_RUNS="${FUZZ_RUNS:-4000}"
TARGETS=(header_parse stream_decrypt bundle_open image_open tar_extract keys_sealed keys_tpm_wrapped keys_cpio keys_usb
    keys_tpm_response keys_tpm_pcr_read keys_tpm_nv keys_tpm_srk_public keys_tpm_hmac keys_tpm_signed_policy keys_pubkey_arg
    dns_answer cmdline_split http_head server_bodies model_toml import_ignition)
MANIFEST=fuzz/Cargo.toml
start=$SECONDS

# A campaign grows fuzz/corpus; the reproducible run starts from the seeds
# alone, in a directory of its own.
if [[ -n $FUZZ_SECONDS ]]; then
    corpus=fuzz/corpus
else
    corpus=fuzz/target/smoke-corpus
    rm -rf "$corpus"
fi
echo "== seeding $corpus from tests/vectors and fuzz/regressions"
cargo run --quiet --release --no-default-features --manifest-path "$MANIFEST" --bin seed_corpora -- \
    tests/vectors "$corpus"
# Inputs that once crashed a target stay in its corpus for good.
for dir in fuzz/regressions/*/; do
    t=$(basename "$dir")
    mkdir -p "$corpus/$t"
    cp "$dir"* "$corpus/$t/"
done

echo "== replaying the corpora without libFuzzer"
cargo run --quiet --release --no-default-features --manifest-path "$MANIFEST" --bin replay -- all "$corpus"

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
    if [[ -n $FUZZ_SECONDS ]]; then
        echo "== fuzzing $t for ${FUZZ_SECONDS} s"
        budget=(-max_total_time="$FUZZ_SECONDS")
    else
        echo "== fuzzing $t for ${FUZZ_RUNS} runs (seed 1)"
        budget=(-runs="$FUZZ_RUNS" -seed=1)
    fi
    if ! cargo fuzz run "$t" "$corpus/$t" -- \
        "${budget[@]}" -timeout=30 -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1; then
        failed+=("$t")
    fi
done

echo "== done in $((SECONDS - start)) s"
if ((${#failed[@]})); then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
