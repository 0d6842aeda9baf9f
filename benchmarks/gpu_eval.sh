#!/usr/bin/env bash
# Issue 5's GPU checks in one go, for a machine with a CUDA GPU and PyTorch but no network (the workplace's
# device machine): the evaluation tests, the CUDA one included, then bench_eval.py on a Pythia-160M-shaped
# model against lm-evaluation-harness, in bf16 and in fp32.
#
# Here, once (needs PyPI; writes .devdata/, which git then ignores):
#   bash benchmarks/gpu_eval.sh prepare
# There, with .devdata carried along:
#   bash benchmarks/gpu_eval.sh run
# Settings (environment): PYTHON (python3), DEVICE (cuda), SHAPE (pythia-160m), PAIRS (1340),
# PEER_BATCH_SIZES (1,64), REPEATS (2: ours and the peer alternate, best kept), DTYPES ("bf16 fp32"),
# OUT (results folder; default gpu-results).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=.devdata
PYTHON=${PYTHON:-python3}

case "${1:-}" in
prepare)
  grep -qx '/.devdata/' .git/info/exclude 2>/dev/null || echo '/.devdata/' >>.git/info/exclude
  mkdir -p "$DATA/whl"
  install -m 644 "${EXPOSURE_SHARED_DATA:-../shared/data}/tokenizers/gpt-neox-20b/tokenizer.json" "$DATA/tokenizer.json"
  # lm-eval alone: what it imports for HFLM (accelerate, transformers, requests, ...) is on the device already.
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: -d "$DATA/whl" lm-eval==0.4.13
  du -sh "$DATA"
  ;;
run)
  OUT=${OUT:-gpu-results}
  mkdir -p "$OUT"
  [ -f "$DATA/tokenizer.json" ] || { echo "no $DATA/tokenizer.json: run '$0 prepare' first, then carry $DATA" >&2; exit 2; }
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/exposure-site "$DATA"/whl/*.whl
  "$PYTHON" -m pip install --no-index --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
    || { tail -40 "$OUT/install.log"; exit 1; }
  export PYTHONPATH="/tmp/exposure-site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, transformers.__version__, torch.cuda.is_available())"
  # each step runs even if one before it failed (device time is short); the exit status says whether any did
  status=0
  "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_evaluate.py 2>&1 | tee "$OUT/tests.log" || status=1
  for dtype in ${DTYPES:-bf16 fp32}; do
    "$PYTHON" benchmarks/bench_eval.py --shape "${SHAPE:-pythia-160m}" --device "${DEVICE:-cuda}" --dtype "$dtype" \
      --pairs "${PAIRS:-1340}" --peer-batch-sizes "${PEER_BATCH_SIZES:-1,64}" --repeats "${REPEATS:-2}" \
      --tokenizer "$DATA/tokenizer.json" \
      --json "$OUT/bench_eval_$dtype.json" 2>&1 | grep -v "Writing model shards" | tee "$OUT/bench_eval_$dtype.log" \
      || status=1
  done
  exit "$status"
  ;;
*)
  echo "usage: $0 prepare|run" >&2
  exit 2
  ;;
esac
