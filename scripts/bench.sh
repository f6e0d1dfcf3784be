#!/usr/bin/env bash
# Reproduces docs/benchmarks.md: a release build, `tickmesh bench all` (three regions with
# REGIONS.md round-trip times, every bench this build has, per-hop latency against
# budgets.toml), then a quick criterion run of every micro-bench, and the machine it ran on.
#
#   scripts/bench.sh                 # writes target/bench/<time>/ and docs/benchmarks.md
#   DURATION=60 RATE=2000 scripts/bench.sh
#   NO_DOCS=1 scripts/bench.sh       # leave docs/benchmarks.md alone
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
out=${OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
duration=${DURATION:-30}
rate=${RATE:-1000}
clients=${CLIENTS:-6}
mkdir -p "$out"

echo "== release build"
cargo build --release --locked -p tickmesh

echo "== tickmesh bench all (3 regions, --wan real, ${duration}s window)"
"$target/release/tickmesh" bench all --regions 3 --wan real --rate "$rate" --clients "$clients" \
  --duration "$duration" --out "$out"

echo "== criterion, quick mode"
crit="$out/criterion.txt"
: > "$crit"
for spec in "-p tickmesh --bench codec" "-p tickmesh --bench fanout" "-p tickmesh-ingest --bench itch" \
            "-p tickmesh-ingest --bench book" "-p tickmesh-ingest --bench dbn" "-p tickmesh-journal --bench append"; do
  # shellcheck disable=SC2086
  cargo bench --locked $spec -- --quick --noplot 2>/dev/null | tee -a "$crit"
done

machine() {
  echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) online CPUs ($(lscpu | sed -n 's/^Thread(s) per core: *//p') thread(s) per core)"
  echo "- Kernel: $(uname -sr)"
  echo "- OS: $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "- Memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
  echo "- Rust: $(rustc -V)"
  echo "- Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (shared machine: other builds and tests ran alongside)"
}

report="$out/benchmarks.md"
{
  echo "# Benchmarks"
  echo
  echo "Produced by \`scripts/bench.sh\` on $(date -u +'%Y-%m-%d %H:%M UTC') (commit $(git rev-parse --short HEAD))."
  echo
  echo "## Machine"
  echo
  machine
  echo
  echo "The machine is shared and noisy (2 vCPUs; three region processes, WAN relays and the"
  echo "clients all run on it): read ratios and medians, and treat tails as upper bounds."
  echo
  sed '1d' "$out/report.md" | sed 's#(e2e/latency.svg)#(benchmarks-latency.svg)#'
  echo
  echo "## Criterion micro-benches (quick mode, fixed seeds)"
  echo
  echo "| bench | median time per iteration | median throughput |"
  echo "|---|---|---|"
  # criterion prints "name time: [lo mid hi]" (the name alone on a line when long), then "thrpt: [lo mid hi]".
  python3 - "$crit" <<'PY'
import re, sys
name = None
time = None
for line in open(sys.argv[1]):
    m = re.match(r"^(\S+/\S+)", line)
    if m:
        name = m.group(1)
    t = re.search(r"time:\s+\[(\S+ \S+) (\S+ \S+) (\S+ \S+)\]", line)
    if t:
        time = t.group(2)
    r = re.search(r"thrpt:\s+\[(\S+ +\S+) (\S+ +\S+) (\S+ +\S+)\]", line)
    if r and name and time:
        print(f"| {name} | {time} | {' '.join(r.group(2).split())} |")
        name = time = None
PY
} > "$report"
echo "report: $report"
if [ -z "${NO_DOCS:-}" ]; then
  cp "$report" docs/benchmarks.md
  cp "$out/e2e/latency.svg" docs/benchmarks-latency.svg
  echo "docs/benchmarks.md updated"
fi
