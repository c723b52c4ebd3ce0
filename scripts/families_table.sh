#!/usr/bin/env bash
# Train every family's synthetic config from scratch and write one Markdown table: the learned metric
# (few-shot accuracy / Recall@1 / kNN top-1), FAM energy at step 0 and at the last validation, the
# uniform-map and untrained-model lines, and the wall time of each run.
#   bash scripts/families_table.sh                    # every family, results/families_synthetic.md
#   CONFIGS="configs/retrieval/ms_synthetic.yaml" bash scripts/families_table.sh [train.py args...]
# Runs one config at a time; PYTHON picks the interpreter (default: python), OUT the table file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
out=${OUT:-results/families_synthetic.md}
configs=${CONFIGS:-configs/quickstart.yaml configs/retrieval/ms_synthetic.yaml configs/retrieval/margin_synthetic.yaml configs/contrastive/npid_synthetic.yaml configs/contrastive/moco_synthetic.yaml}
runs=()
for config in $configs; do
  name=families_$(basename "$config" .yaml)
  start=$(date +%s.%N)
  $PY train.py fit --config "$config" --trainer.logger.init_args.name "$name" "$@"
  end=$(date +%s.%N)
  log_dir=$(ls -td logs/"$name"/version_* | head -1)
  runs+=("$config" "$log_dir" "$($PY -c "print(round($end - $start, 1))")")
done
mkdir -p "$(dirname "$out")"
$PY scripts/families_table.py "${runs[@]}" | tee "$out"
echo "table written to $out"
