#!/usr/bin/env bash
# One prepared run on a CUDA machine (CuPy, cuDNN 9, pytest there): build in place, the GPU
# tests, bench/gpu.py against PyTorch, then the whole suite. Logs go to $OUT (the device tool's
# folder) or ./gpu-logs. Each stage has its own time limit so that a slow one cannot hide the
# others' logs:  T_TESTS, T_BENCH, T_SUITE (seconds); SWEEP=1 adds a sweep of the cuDNN
# algorithms around the engine's rule.   bash bench/gpu_check.sh
out=${OUT:-gpu-logs}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  lscpu | grep -E "^Model name|^CPU\(s\)"
  $py -c "import cupy, numpy, scipy; print('cupy', cupy.__version__, 'cuda runtime',
cupy.cuda.runtime.runtimeGetVersion(), 'numpy', numpy.__version__, 'scipy', scipy.__version__)"
} 2>&1 | tee "$out/env.log"

if ! $py setup.py build_ext --inplace -q >"$out/build.log" 2>&1; then
  tail -40 "$out/build.log"
  exit 1
fi
$py -c "from fastgru.engines import _cudnn_api as a; L = a.lib()
print('cuDNN', L.cudnnGetVersion(), 'from', a._path)" 2>&1 | tee -a "$out/env.log"

echo "== GPU tests"
timeout "${T_TESTS:-240}" $py -m pytest -q -p no:cacheprovider -rfEsP \
  tests/gpu tests/test_layers_gpu.py tests/test_cudnn_rules.py >"$out/gpu_tests.log" 2>&1
echo "rc=$?"
grep -E "passed|failed|error" "$out/gpu_tests.log" | tail -3
grep -E "^(FAILED|ERROR)" "$out/gpu_tests.log" | head -20
grep -E "training=|weight space" "$out/gpu_tests.log" | sort -u | head -20

echo "== bench/gpu.py (cuDNN engine vs PyTorch)"
timeout "${T_BENCH:-150}" $py bench/gpu.py --peers cudnn,torch --repeats 20 >"$out/bench.log" 2>&1
echo "rc=$?"
cat "$out/bench.log"
echo "== bench/gpu.py (xp engine, small shapes)"
timeout 60 $py bench/gpu.py --peers cudnn,xp --shapes 1x100x64x128,32x100x64x128 \
  --repeats 5 --warmup 1 >"$out/bench_xp.log" 2>&1
echo "rc=$?"
cat "$out/bench_xp.log"

if [ -n "${SWEEP:-}" ]; then  # SWEEP=1: the persistent kernels forced at batches around the rule
  echo "== algorithm sweep (forced persistent kernels vs the engine's choice)"
  for algo in auto standard persist-static; do
    timeout 120 $py bench/gpu.py --peers cudnn --algo $algo --repeats 10 --shapes \
      4x100x128x256,8x100x128x256,16x100x128x256,8x100x512x1024,2x100x1024x2048 \
      >"$out/sweep_$algo.log" 2>&1
    echo "-- $algo rc=$?"
    grep "^| [0-9]" "$out/sweep_$algo.log"
  done
fi

echo "== whole suite"
timeout "${T_SUITE:-150}" $py -m pytest -q -p no:cacheprovider >"$out/suite.log" 2>&1
echo "rc=$?"
grep -E "passed|failed|error" "$out/suite.log" | tail -3
grep -E "^(FAILED|ERROR)" "$out/suite.log" | head -20
