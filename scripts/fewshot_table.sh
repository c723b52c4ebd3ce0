#!/usr/bin/env bash
# Train every few-shot backbone on one data set and assemble one paper-style table (Tables I-II).
#   bash scripts/fewshot_table.sh synthetic            # CPU-sized synthetic configs
#   bash scripts/fewshot_table.sh cub /data/CUB_200_2011 [extra train.py args, e.g. --trainer.devices 4]
# Writes results/fewshot_<variant>.csv and .md (one row per backbone).
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:?usage: fewshot_table.sh synthetic|cub [CUB root] [train.py args...]}
shift
args=()
if [ "$variant" = cub ]; then
  args+=(--data.root "${1:?CUB root folder}")
  shift
fi
PY=${PYTHON:-python}
declare -A title=([conv4]=Conv4 [conv64f]=Conv64F [resnet12]=ResNet12 [resnet18]=ResNet18 [wrn28_10]=WideResNet28)
for backbone in ${BACKBONES:-conv64f conv4 resnet18 wrn28_10 resnet12}; do
  config=configs/fewshot/${backbone}_${variant}.yaml
  name=${backbone}_${variant}
  $PY train.py fit --config "$config" "${args[@]}" "$@" --trainer.logger.init_args.name "$name"
  ckpt=$(ls -t logs/"$name"/version_*/checkpoints/last.ckpt | head -1)
  $PY evaluate.py --config "$config" "${args[@]}" "$@" --ckpt_path "$ckpt" --name "${title[$backbone]}" \
      --table results/fewshot_"$variant" --note "$variant data" --trainer.logger.init_args.name "${name}_test"
done
