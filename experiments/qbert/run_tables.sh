#!/usr/bin/env bash
# Q-BERT tables on MiniLM-L6 with SST-2 subsets, one thread per job (budgets: README.md).
# Paper protocol: the fp32 baseline is fine-tuned first; every quantized row runs QAT from its checkpoint.
#   bash experiments/qbert/run_tables.sh table1 &     # pinned to core ${CORE1:-0}
#   bash experiments/qbert/run_tables.sh tables23 &   # pinned to core ${CORE23:-1}; starts after table1's baseline
#   bash experiments/qbert/run_tables.sh mnli         # Table 1 on the MNLI subset, core ${CORE_MNLI:-1}
#   bash experiments/qbert/run_tables.sh all          # all of them, one after the other, on core ${CORE1:-0}
set -uo pipefail
cd "$(dirname "$0")/../.."
export LOWBIT_DATA_DIR=${LOWBIT_DATA_DIR:-../shared/data/glue} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=${OUT:-logs/tables_ft}
RUN="trainer.max_epochs=1 optim.lr=1e-4 logger=csv callbacks.progress_bar=null"
BUDGET="data.max_train_samples=${TRAIN:-1500} data.max_eval_samples=${EVAL:-872} $RUN"
BASELINE=$OUT/qbert_sst2/baseline

table1() {
  local PY="taskset -c ${CORE1:-0} .venv/bin/python"
  # stops with a one-line error at the first Q-BERT-MP row until the baseline's Hessian spectrum exists
  [ -f $BASELINE/checkpoints/best.hessian.json ] || $PY -m lowbit.tables qbert_sst2 $BUDGET --out $OUT/qbert_sst2
  [ -f $BASELINE/checkpoints/best.hessian.json ] || $PY -m lowbit.hessian data=sst2 data.max_length=64 \
      data.max_train_samples=${TRAIN:-1500} hessian.checkpoint=$BASELINE/checkpoints/best.ckpt \
      hessian.method=lanczos "hessian.blocks=[layer,module,embedding]"
  $PY -m lowbit.tables qbert_sst2 $BUDGET --out $OUT/qbert_sst2
}

tables23() {
  local PY="taskset -c ${CORE23:-1} .venv/bin/python"
  until [ -f $BASELINE/summary.json ]; do sleep 30; done
  # Tables 2 and 3 start from the same fp32 run as Table 1 (identical composed config): reuse it
  for t in qbert_groups qbert_modules; do
    [ -d $OUT/$t/baseline ] || { mkdir -p $OUT/$t && cp -r $BASELINE $OUT/$t/baseline; }
    $PY -m lowbit.tables $t $BUDGET --out $OUT/$t
  done
}

mnli() {
  local PY="taskset -c ${CORE_MNLI:-1} .venv/bin/python" B=$OUT/qbert_mnli/baseline
  local M="data.max_train_samples=${TRAIN_MNLI:-1500} data.max_eval_samples=${EVAL_MNLI:-500} data.max_length=${LEN_MNLI:-128} $RUN"
  [ -f $B/checkpoints/best.hessian.json ] || $PY -m lowbit.tables qbert_mnli $M --out $OUT/qbert_mnli
  [ -f $B/checkpoints/best.hessian.json ] || $PY -m lowbit.hessian data=mnli data.max_length=${LEN_MNLI:-128} \
      data.max_train_samples=${TRAIN_MNLI:-1500} hessian.checkpoint=$B/checkpoints/best.ckpt \
      hessian.method=lanczos "hessian.blocks=[layer]"
  $PY -m lowbit.tables qbert_mnli $M --out $OUT/qbert_mnli
}

case "${1:-all}" in
  table1) table1 ;;
  tables23) tables23 ;;
  mnli) mnli ;;
  all) table1; CORE23=${CORE1:-0} tables23; CORE_MNLI=${CORE1:-0} mnli ;;
  *) echo "usage: $0 [table1|tables23|mnli|all]" >&2; exit 2 ;;
esac
