#!/usr/bin/env bash
# What a lent GPU is asked for, as one command that fits a session's device time (15 minutes in all,
# 10 a command, the machine's start included): gpu_epoch.py's table, shuffle_bn.py's (seconds), then
# one gpu_suite.py suite in the minutes left. Logs and benchmarks/RESULTS.md (with the suite's new
# section) go to $OUT, or to benchmarks/out/gpu_session/ where $OUT is unset.
#
#   bash benchmarks/gpu_session.sh wheels                  # here, once: the packages the GPU machine's
#                                                          #   python lacks, as wheels in .whl/ (git-ignored)
#   bash benchmarks/gpu_session.sh [contrastive|generators]  # there, from the repo root, with .whl and
#                                                          #   data/cifar10-jpg.tar.gz carried
#   bash benchmarks/gpu_session.sh --tiny [SUITE]          # any machine: the same steps at the tiny size
#
# $GPU_SESSION_MINUTES (default 9) is the whole command's budget; the suite gets what gpu_epoch.py
# leaves of it, less half a minute for writing the results. $GPU_EPOCH_ARGS (unset: --profile-steps 3,
# where each arm's time goes) and $GPU_SUITE_ARGS are added to each script's command line as shell
# words, quotes honoured (e.g. GPU_SUITE_ARGS="--arms A C_latent Acm", or GPU_EPOCH_ARGS="--methods
# SimCLR 'MoCo v2' --paths device resident compiled bound --profile-steps 3" to time the
# inductor-compiled view recipe too, a compilation per arm); $PYTHON is the
# interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

# jsonargparse[signatures] and its needs, at the versions CI tests with (pure-Python wheels)
WHEELS=(jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0)

suite=contrastive
tiny=()
for arg in "$@"; do
  case $arg in
    wheels)
      python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
      exit 0 ;;
    --tiny) tiny=(--tiny) ;;
    contrastive | generators) suite=$arg ;;
    *) echo "gpu_session.sh: unknown argument '$arg' (accepted: wheels, contrastive, generators, --tiny)" >&2; exit 2 ;;
  esac
done

out=${OUT:-benchmarks/out/gpu_session}
mkdir -p "$out"
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_session_site .whl/*.whl
  export PYTHONPATH=/tmp/gpu_session_site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
# shell words, quotes honoured (arm names hold spaces); unset GPU_EPOCH_ARGS: each arm profiled for 3 steps too
epoch_spec=${GPU_EPOCH_ARGS---profile-steps 3}
eval "epoch_args=($epoch_spec)"
eval "suite_args=(${GPU_SUITE_ARGS:-})"
budget_s=$(awk -v m="${GPU_SESSION_MINUTES:-9}" 'BEGIN { printf "%d", m * 60 }')
start=$(date +%s)

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$python" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"
} 2>&1 | tee "$out/machine.log"

"$python" benchmarks/gpu_epoch.py "${tiny[@]}" "${epoch_args[@]}" 2>&1 | tee "$out/gpu_epoch.log"
# seconds: MoCo's key forward both ways; its failure must not cost the suite its minutes
"$python" benchmarks/shuffle_bn.py "${tiny[@]}" 2>&1 | tee "$out/shuffle_bn.log" || echo "shuffle_bn.py failed (see shuffle_bn.log)"
left=$(awk -v b="$budget_s" -v s="$(( $(date +%s) - start ))" 'BEGIN { printf "%.2f", (b - s - 30) / 60 }')
echo "gpu_epoch.py took $(( $(date +%s) - start )) s; gpu_suite.py --suite $suite gets $left min" | tee -a "$out/machine.log"
"$python" benchmarks/gpu_suite.py --suite "$suite" --budget-minutes "$left" "${tiny[@]}" ${tiny:+--no-write} "${suite_args[@]}" 2>&1 | tee "$out/gpu_suite_$suite.log"
cp benchmarks/RESULTS.md "$out/RESULTS.md"
echo "done in $(( $(date +%s) - start )) s; logs and RESULTS.md in $out"
