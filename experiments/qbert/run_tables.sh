#!/usr/bin/env bash
# Q-BERT tables on MiniLM-L6 with SST-2 subsets, one core, one thread (budgets: README.md).
#   CORE=1 bash experiments/qbert/run_tables.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
export LOWBIT_DATA_DIR=${LOWBIT_DATA_DIR:-../shared/data/glue} HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY="taskset -c ${CORE:-1} .venv/bin/python"
OUT=${OUT:-logs/tables}
RUN="trainer.max_epochs=1 optim.lr=1e-4 logger=csv callbacks.progress_bar=null"
T1="data.max_train_samples=${TRAIN1:-1500} data.max_eval_samples=${EVAL1:-872} $RUN"
T23="data.max_train_samples=${TRAIN23:-1500} data.max_eval_samples=${EVAL23:-872} $RUN"
# Table 1 stops at the first Q-BERT-MP row until the baseline's Hessian spectrum exists
[ -f $OUT/qbert_sst2/baseline/checkpoints/best.hessian.json ] || $PY -m lowbit.tables qbert_sst2 $T1 --out $OUT/qbert_sst2
$PY -m lowbit.hessian data=sst2 data.max_length=64 data.max_train_samples=${TRAIN1:-1500} \
    hessian.checkpoint=$OUT/qbert_sst2/baseline/checkpoints/best.ckpt hessian.method=lanczos "hessian.blocks=[layer]"
$PY -m lowbit.tables qbert_sst2 $T1 --out $OUT/qbert_sst2
$PY -m lowbit.tables qbert_groups $T23 --out $OUT/qbert_groups
$PY -m lowbit.tables qbert_modules $T23 --out $OUT/qbert_modules
