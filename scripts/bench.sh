#!/usr/bin/env bash
# Every benchmark in one go: the writer, imgtool and capture benches, and any
# executable scripts/bench.d/*.sh; then one Markdown table of every figure
# against its peer and target, and an SVG chart of the ratios.
#
#   scripts/bench.sh                  # full sizes: 1 GiB, and the stop of 256 MiB,
#                                     # 1 GiB and 4 GiB processes; an hour or more,
#                                     # on a quiet machine with 12 GB free
#   BENCH_SMALL=1 scripts/bench.sh    # small sizes, 2 runs: a smoke test of minutes
#   BENCH_ONLY="writer capture" scripts/bench.sh
#                                     # only these benches (writer, imgtool,
#                                     # capture, or a bench.d hook's name); the
#                                     # default runs them all
#
# The table goes to stdout and to $BENCH_OUT/bench.md, the chart to
# $BENCH_OUT/ratios.svg, each bench's whole output to $BENCH_OUT/NAME.log
# (BENCH_OUT defaults to target/bench). The sizes and run counts of each bench
# can be set as usual (see the top of each bench file); BENCH_SMALL only sets
# those that are not set.
#
# Hook: a later capability adds an executable scripts/bench.d/NAME.sh. Every
# line any bench prints in the form
#   @@BENCH<TAB>bench<TAB>figure<TAB>ours<TAB>unit<TAB>peer<TAB>peer value<TAB>ratio<TAB>target<TAB>what each side does
# joins the table and the chart: ratio > 1 means memimg is better, target is
# the least ratio asked for (or -).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-target/bench}
mkdir -p "$out"
if [ -n "${BENCH_SMALL:-}" ]; then
  export MEMIMG_BENCH_MB=${MEMIMG_BENCH_MB:-64}
  export MEMIMG_BENCH_RUNS=${MEMIMG_BENCH_RUNS:-2}
  export IMGTOOL_BENCH_MIB=${IMGTOOL_BENCH_MIB:-64}
  export IMGTOOL_BENCH_RUNS=${IMGTOOL_BENCH_RUNS:-2}
  export MEMIMG_BENCH_MIB=${MEMIMG_BENCH_MIB:-64}
  export MEMIMG_BENCH_STOP_MIB=${MEMIMG_BENCH_STOP_MIB:-64,128}
  export MEMIMG_REMOTE_BENCH_MIB=${MEMIMG_REMOTE_BENCH_MIB:-64}
  export MEMIMG_REMOTE_BENCH_RUNS=${MEMIMG_REMOTE_BENCH_RUNS:-2}
fi
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
status=0
rm -f "$out"/*.log

run() {
  local name=$1
  shift
  if [ -n "${BENCH_ONLY:-}" ] && [[ " $BENCH_ONLY " != *" $name "* ]]; then
    return
  fi
  echo "== $name: $*" >&2
  if ! "$@" >"$out/$name.log" 2>&1; then
    echo "bench $name failed; see $out/$name.log" >&2
    status=1
  fi
  grep -v '^@@BENCH' "$out/$name.log" | tail -n 40 >&2
}

run writer cargo bench -p memimg-tests --bench write
run imgtool cargo bench -p imgtool --bench tool
run capture cargo bench -p memimg-capture --bench capture
for hook in scripts/bench.d/*.sh; do
  [ -x "$hook" ] && run "$(basename "$hook" .sh)" "$hook"
done

grep -h $'^@@BENCH\t' "$out"/*.log | cut -f2- >"$out/figures.tsv"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

{
  echo "Measured at commit $commit on $(date -u +%Y-%m-%d), $(nproc) cores, kernel $(uname -r);"
  echo "load average $load_before before, $load_after after${BENCH_SMALL:+; small sizes (BENCH_SMALL)}."
  echo "Figures are medians (each bench's log has the spread). Ratio > 1: memimg is better."
  echo
  echo "| bench | figure | memimg | peer | peer's | ratio | target | | what each side does |"
  echo "|---|---|---|---|---|---|---|---|---|"
  awk -F'\t' '{
    met = ($8 == "-") ? "" : (($7 + 0 >= $8 + 0) ? "met" : "**missed**")
    tgt = ($8 == "-") ? "-" : "≥ " $8 "×"
    printf "| %s | %s | %s %s | %s | %s %s | %.2f× | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $4, $7, tgt, met, $9
  }' "$out/figures.tsv"
} | tee "$out/bench.md"

# The chart: one bar per figure, its ratio on a log scale, the target marked.
awk -F'\t' -v commit="$commit" '
  function esc(s) { gsub(/&/, "\\&amp;", s); gsub(/</, "\\&lt;", s); gsub(/>/, "\\&gt;", s); return s }
  function lg(x) { return log(x) / log(10) }
  function xof(r) {
    if (r < lo) r = lo
    if (r > hi) r = hi
    return left + (lg(r) - lg(lo)) / (lg(hi) - lg(lo)) * width
  }
  { n++; fig[n] = $1 ": " $2; ratio[n] = $7 + 0; target[n] = $8 }
  END {
    lo = 0.1; hi = 1000; left = 470; width = 400; row = 22; top = 40
    h = top + n * row + 40
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", left + width + 70, h
    printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
    printf "<text x=\"10\" y=\"20\" font-size=\"14\">memimg against its peers: ratio (log scale, &gt; 1 is better for memimg), target marked in black; commit %s</text>\n", esc(commit)
    for (t = lo; t <= hi; t *= 10) {
      x = xof(t)
      printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ccc\"/>\n", x, top - 6, x, top + n * row
      printf "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" fill=\"#666\">%g×</text>\n", x, top + n * row + 16, t
    }
    x1 = xof(1)
    printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n", x1, top - 6, x1, top + n * row
    for (i = 1; i <= n; i++) {
      y = top + (i - 1) * row
      label = fig[i]
      if (length(label) > 72) label = substr(label, 1, 71) "…"
      printf "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", left - 8, y + 15, esc(label)
      color = "#9aa"
      if (target[i] != "-") color = (ratio[i] >= target[i] + 0) ? "#3a8f3a" : "#c43c3c"
      x = xof(ratio[i])
      bx = (x < x1) ? x : x1
      bw = (x < x1) ? x1 - x : x - x1
      printf "<rect x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\"/>\n", bx, y + 4, bw, row - 8, color
      printf "<text x=\"%.1f\" y=\"%d\" fill=\"#333\">%.2f×</text>\n", ((x > x1) ? x : x1) + 4, y + 15, ratio[i]
      if (target[i] != "-") {
        tx = xof(target[i] + 0)
        printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"black\" stroke-width=\"2\"/>\n", tx, y + 1, tx, y + row - 1
      }
    }
    printf "</svg>\n"
  }' "$out/figures.tsv" >"$out/ratios.svg"

echo >&2
echo "table: $out/bench.md; chart: $out/ratios.svg; logs: $out/*.log" >&2
exit "$status"
