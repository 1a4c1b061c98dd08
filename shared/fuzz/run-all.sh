#!/usr/bin/env bash
# Build every fuzz target once, then run each for N seconds (first argument,
# default 10). Fails if any target crashes, hangs or leaks past its limits;
# the input that did it is left in shared/fuzz/artifacts/<target>/.
#
#   shared/fuzz/run-all.sh        # CI smoke run, 10 s per target
#   shared/fuzz/run-all.sh 60     # a longer campaign
#   FUZZ_TARGETS="wire_parse reassembly" shared/fuzz/run-all.sh 30
#
# Each target starts from its committed seeds (shared/fuzz/seeds/<target>/)
# plus whatever earlier runs found, kept in shared/fuzz/corpus/<target>/
# (gitignored). Needs cargo-fuzz and a nightly toolchain; without nightly it
# falls back to RUSTC_BOOTSTRAP=1 on the default toolchain.
#
# Knobs (environment): FUZZ_TARGETS (default: all), FUZZ_SANITIZER
# (default: none; "address" for ASan, slower to build and run),
# FUZZ_PARALLEL (targets run at once, default: the number of cores),
# FUZZ_UNIT_TIMEOUT (seconds one input may take, default 10),
# FUZZ_RSS_LIMIT_MB (default 2048).
set -euo pipefail

secs="${1:-10}"
if ! [[ "$secs" =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
  echo "usage: $0 [seconds per target]" >&2
  exit 2
fi
fuzz_dir="$(cd "$(dirname "$0")" && pwd)"
cd "$fuzz_dir/.."   # shared/: cargo fuzz finds fuzz/ from here

sanitizer="${FUZZ_SANITIZER:-none}"
unit_timeout="${FUZZ_UNIT_TIMEOUT:-10}"
rss_limit="${FUZZ_RSS_LIMIT_MB:-2048}"

# cargo fuzz needs nightly (-Z flags, sanitizer coverage).
cargo=(cargo)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  cargo=(cargo +nightly)
else
  export RUSTC_BOOTSTRAP=1
fi

# Release with debug assertions and overflow checks: an arithmetic
# overflow on hostile input is a finding, not a silent wrap.
# FUZZ_CODEGEN_UNITS (default 16) trades a little run speed for a much
# faster build; a long campaign may set 1.
build_flags=(--release --debug-assertions --sanitizer "$sanitizer"
  --codegen-units "${FUZZ_CODEGEN_UNITS:-16}")

if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  mapfile -t targets < <("${cargo[@]}" fuzz list)
fi

echo "=== building the fuzz targets (sanitizer: $sanitizer)"
start=$SECONDS
if ! "${cargo[@]}" fuzz build "${build_flags[@]}"; then
  # A linker killed by the machine (a bus error when the disk runs short,
  # say) is not a finding: show the disk, then build again one job at a
  # time, which needs the least memory and scratch space.
  df -h "$fuzz_dir" || true
  echo "=== fuzz build failed; once more, one job at a time"
  CARGO_BUILD_JOBS=1 "${cargo[@]}" fuzz build "${build_flags[@]}"
fi
echo "built in $((SECONDS - start)) s"

triple="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$fuzz_dir/target/$triple/release"
results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT

# One target: its own corpus (seeded), artifacts and log; exit code into
# $results/<target>.
run_one() {
  local t="$1"
  local corpus="$fuzz_dir/corpus/$t"
  local artifacts="$fuzz_dir/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  if [ -d "$fuzz_dir/seeds/$t" ]; then
    cp -n "$fuzz_dir/seeds/$t"/* "$corpus"/ 2>/dev/null || true
  fi
  # The built binary directly: `cargo fuzz run` would rebuild first
  # whenever a source file changed in the meantime.
  local rc=0
  "$bin_dir/$t" "$corpus" \
    -max_total_time="$secs" \
    -timeout="$unit_timeout" \
    -rss_limit_mb="$rss_limit" \
    -print_final_stats=1 \
    -artifact_prefix="$artifacts/" \
    >"$fuzz_dir/artifacts/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$results/$t"
}

# As many targets at once as there are cores: each still gets `secs` of
# wall time on a core of its own.
parallel="${FUZZ_PARALLEL:-$(nproc)}"
echo "=== running each target for ${secs} s, ${parallel} at a time"
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do
    wait -n || true
  done
  run_one "$t" &
done
wait

failed=()
for t in "${targets[@]}"; do
  log="$fuzz_dir/artifacts/$t.log"
  rc="$(cat "$results/$t" 2>/dev/null || echo missing)"
  done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" 2>/dev/null | tail -n 1 || true)"
  if [ "$rc" = 0 ] && [ -n "$done_line" ]; then
    printf '%-16s %s\n' "$t" "$done_line"
  else
    printf '%-16s FAILED (exit %s), log: %s\n' "$t" "$rc" "$log"
    grep -E -A 3 'panicked|ERROR|SUMMARY|ALARM|out-of-memory|Test unit written' "$log" | head -n 30 || true
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]} (logs and inputs under shared/fuzz/artifacts/)" >&2
  exit 1
fi
echo "all ${#targets[@]} fuzz targets ran ${secs} s without a crash"
