#!/usr/bin/env bash
# One prepared run on a CPU that the defaults were not tuned on (issue #10's Zen 5, say): build
# in place, the CPU engine's tests, one-process A/Bs of every switch whose default was chosen by
# measurements on other CPUs (each line gives the setting to flip in src_c/gemm.c if the other
# value wins there) and a standalone probe (bench/_overlap_probe.c, with the A/Bs), then issue
# #10's acceptance runs and bench/targets.py. About 45 minutes on
# two cores; logs go to $OUT or ./cpu-logs. Each stage has its own time limit: T_TESTS, T_AB
# (per A/B), T_RUN (per benchmark run), in seconds. SKIP_ACCEPT=1 stops after the A/Bs; AB=0
# skips them. Exit status 1 if the tests, a stage or a target failed (every stage still runs);
# Ctrl-C stops the run.   bash bench/cpu_check.sh
set -o pipefail
out=$(realpath -m "${OUT:-cpu-logs}")
py=${PYTHON:-python3}
case $py in */*) py=$(realpath -m "$py") ;; esac
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0

# timeout moves its command into a process group of its own, out of reach of a terminal's
# Ctrl-C; run it in the background and wait (which a trap interrupts), and on INT / TERM pass
# the signal on (timeout relays it to its command's group)
child=
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; exit 130' INT TERM
limit() { # limit SECONDS COMMAND...: its exit status
  timeout "$@" &
  child=$!
  wait "$child"
  local rc=$?
  child=
  return $rc
}

{
  date -u
  lscpu | grep -E "^Model name|^CPU\(s\)|^Vendor ID|^L1d|^L2|^L3|^Flags" | cut -c1-200
  git log --oneline -1 2>/dev/null
  "$py" -c "import numpy, scipy; print('numpy', numpy.__version__, 'scipy', scipy.__version__)"
} 2>&1 | tee "$out/env.log"

if ! "$py" setup.py build_ext --inplace -q >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  exit 1
fi
"$py" -c "from fastgru._cpu import _gru; print('best ISA', _gru.isa_best(), 'strips', _gru.strips(),
'kb_own', _gru.kb_own())" 2>&1 | tee -a "$out/env.log"

# stage NAME SECONDS COMMAND...: logged to $out/NAME.log; a failure sets the exit status
stage() {
  local name=$1 secs=$2
  shift 2
  echo "-- $name: ${*:2}"
  limit "$secs" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc"
  [ $rc = 0 ] || status=1
}

echo "== CPU engine tests"
stage tests "${T_TESTS:-300}" "$py" -m pytest -q -p no:cacheprovider tests/test_engine_cpu.py \
  tests/test_engine_cpu_backward.py
grep -E "passed|failed|error" "$out/tests.log" | tail -2
grep -E "^(FAILED|ERROR)" "$out/tests.log" | head -20

# name, arguments: each A/B alternates the two values twice (0,1,0,1), so that the two columns
# of one value show the run's own noise beside the difference between the values
ab() {
  stage "ab_$1" "${T_AB:-400}" "$py" bench/ab.py "${@:2}"
  grep -E "^[0-9]+t " "$out/ab_$1.log"
}
if [ "${AB:-1}" != 0 ]; then
  echo "== A/Bs of the per-CPU defaults (first/other > 1: that variant is faster)"
  # strips: on by default on Intel only (fg_strips)
  ab strips --strips 0,1,0,1 64x200x128x256,256x50x256x512,16x500x512x1024 --threads 1,2
  # own panels in the K-blocked weight-gradient GEMMs (two or more threads): on everywhere
  # (fg_kb_own)
  ab kb_own --kb-own 0,1,0,1 --mode training 256x50x256x512,64x200x128x256 --threads 2
  # panels in alternating order from step to step: on everywhere (fg_zigzag)
  ab zigzag --zigzag 0,1,0,1 64x200x128x256,256x50x256x512,16x500x512x1024 --threads 1,2
  # batch-1/2 teams exchanging h inside the product: on everywhere (fg_overlap)
  ab overlap --overlap 0,1,0,1 1x100x64x128,1x1000x128x256 --threads 2 --rounds 20 \
    --seconds 0.1 --stat min
  # the gate pass's prefetch of the next row's inputs: off on Intel only (fg_gate_prefetch)
  ab gate_prefetch --gate-prefetch 0,1,0,1 32x100x64x128,64x200x128x256,256x50x256x512 \
    --threads 1,2
  # batch-1 backward split over units: read per call (FASTGRU_CPU_BWD_SPLIT, engines/cpu.py)
  ab bwd_split --env FASTGRU_CPU_BWD_SPLIT=0,1,0,1 --mode training 1x1000x128x256,1x300x64x128 \
    --threads 2
  # whether pipelining the input projection into the products' L3 stream would pay here (a
  # standalone probe; "jobs"/"stream" near "products": it would, see bench/_overlap_probe.c)
  # (AVX-512 tiles: skipped elsewhere; a build or run that fails sets the exit status)
  echo "-- overlap probe"
  if ! grep -qw avx512f /proc/cpuinfo; then
    echo "skipped: the probe's tiles need AVX-512F" >"$out/overlap.log"
  elif ! gcc -O3 -march=native -o "$out/overlap_probe" bench/_overlap_probe.c \
      >"$out/overlap.log" 2>&1; then
    echo "rc=build failed" >>"$out/overlap.log"
    status=1
  else
    limit 120 "$out/overlap_probe" 14 2 >>"$out/overlap.log" 2>&1
    rc=$?
    echo "rc=$rc" >>"$out/overlap.log"
    [ $rc = 0 ] || status=1
  fi
  cat "$out/overlap.log"
fi
[ "${SKIP_ACCEPT:-0}" = 1 ] && exit $status

echo "== issue #10 acceptance runs"
run() {
  stage "$1" "${T_RUN:-1500}" "$py" "${@:2}"
  grep -E "^\| [0-9]" "$out/$1.log"
}
run inference bench/cpu_inference.py --rounds 2 --json "$out/a.json"
run inference_last bench/cpu_inference.py --rounds 2 --no-return-sequences --json "$out/b.json"
run training bench/cpu_training.py --rounds 2 --json "$out/c.json"
echo "== targets"
"$py" bench/targets.py "$out/a.json" "$out/b.json" "$out/c.json" 2>&1 | tee "$out/targets.log" \
  || status=1
exit $status
