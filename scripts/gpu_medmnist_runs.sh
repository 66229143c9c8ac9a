#!/usr/bin/env bash
# The real-data MedMNIST v2 runs that were made on one GPU (an H200 lent to a development session), each
# seed a parallel process on the same GPU:
#
#   scripts/gpu_medmnist_runs.sh DATA_ROOT RUNS_DIR STAGE...
#
#   accept_pneumonia   medmnist_v2 preset, ResNet-18 (28) from scratch, PneumoniaMNIST
#   distill_pneumonia  the ensemble of those runs as teacher, timm:resnet18 student alone and distilled (needs
#                      accept_pneumonia's weights: run both stages in one call on a machine that keeps them)
#   official_pneumonia bench/medmnist_v2_accuracy.py: the official baseline loop on PneumoniaMNIST
#   breast_init        BreastMNIST on the same GPU, into RUNS_DIR/gpu_breast/: the official loop (official), the
#                      medmnist_v2 preset (preset), and the preset without timm's zero_init_last
#                      (default_init), the three at once
#   breast_seeds       the official loop and the preset on BreastMNIST only (more seeds of breast_init)
#   init_torch         the preset with PyTorch's default initialisation (init=torch, which now covers the head
#                      too, as the preset does), on both datasets: RUNS_DIR/gpu_breast/torch_init and
#                      RUNS_DIR/torch_init_pneumonia
#
# The preset's resnet18_28 took init=torch after the accept_pneumonia, distill_pneumonia and breast_* runs in
# the README were made (they used timm's initialisation); those stages now run the current preset.
#
# Seeds: $SEEDS (default "0 1 2"), each a process; $CHECKPOINT_EVERY: --checkpoint-every (default 1). Logs go
# to RUNS_DIR/logs. Seeds that already finished are skipped (--resume, and the bench's own skip), so a stage
# re-run with more seeds adds them. Python: $PYTHON, else the checkout's .venv, else python3.
set -euo pipefail
data=$(realpath "$1")
runs=$2
shift 2
mkdir -p "$runs/logs"
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
if [ -z "${PYTHON:-}" ] && [ -x "$here/.venv/bin/python" ]; then python=$here/.venv/bin/python; fi
reference=${MEDADAPT_REFERENCE:-$here/../shared/reference/medmnist_v2_benchmark.csv}

medadapt() { OMP_NUM_THREADS=2 "$python" -m medadapt "$@"; }
official() { OMP_NUM_THREADS=2 "$python" "$here/bench/medmnist_v2_accuracy.py" --data-root "$data" --device cuda \
    --threads 2 --reference "$reference" "$@"; }

# per_seed NAME CMD...: CMD --seeds S for S in $SEEDS as parallel processes; fails if any seed fails
per_seed() {
    local name=$1 pids=() s rc=0
    shift
    for s in ${SEEDS:-0 1 2}; do
        "$@" --seeds "$s" >"$runs/logs/${name}_s$s.log" 2>&1 &
        pids+=($!)
    done
    for s in "${pids[@]}"; do wait "$s" || rc=1; done
    if [ "$rc" -ne 0 ]; then
        echo "$name: a seed failed, see $runs/logs/${name}_s*.log" >&2
        return 1
    fi
    echo "$name: done"
}

preset=(--preset medmnist_v2 --data-root "$data" --device cuda --resume --checkpoint-every "${CHECKPOINT_EVERY:-1}")
for stage in "$@"; do
    case $stage in
    accept_pneumonia)
        per_seed accept_pneumonia medadapt finetune "${preset[@]}" --dataset medmnist:pneumoniamnist \
            --out "$runs/accept_pneumonia"
        ;;
    distill_pneumonia)
        per_seed distill_pneumonia medadapt distill "${preset[@]}" --dataset medmnist:pneumoniamnist \
            --teacher "$runs/accept_pneumonia" --student timm:resnet18 --epochs 30 --milestones 15 23 \
            --select-on val_auc --out "$runs/distill_pneumonia"
        ;;
    official_pneumonia)
        per_seed official_pneumonia official --dataset pneumoniamnist --out "$runs/official_pneumonia"
        ;;
    breast_init)
        per_seed breast_official official --dataset breastmnist --out "$runs/gpu_breast/official" &
        a=$!
        per_seed breast_preset medadapt finetune "${preset[@]}" --dataset medmnist:breastmnist \
            --out "$runs/gpu_breast/preset" &
        b=$!
        per_seed breast_default_init medadapt finetune "${preset[@]}" --dataset medmnist:breastmnist \
            --backbone "timm:resnet18?stem=cifar&zero_init_last=false" --out "$runs/gpu_breast/default_init"
        wait "$a"
        wait "$b"
        ;;
    breast_seeds)
        per_seed breast_official official --dataset breastmnist --out "$runs/gpu_breast/official" &
        a=$!
        per_seed breast_preset medadapt finetune "${preset[@]}" --dataset medmnist:breastmnist \
            --out "$runs/gpu_breast/preset"
        wait "$a"
        ;;
    init_torch)
        per_seed breast_torch_init medadapt finetune "${preset[@]}" --dataset medmnist:breastmnist \
            --backbone "timm:resnet18?stem=cifar&init=torch" --out "$runs/gpu_breast/torch_init" &
        a=$!
        per_seed pneumonia_torch_init medadapt finetune "${preset[@]}" --dataset medmnist:pneumoniamnist \
            --backbone "timm:resnet18?stem=cifar&init=torch" --out "$runs/torch_init_pneumonia"
        wait "$a"
        ;;
    *)
        echo "unknown stage '$stage': accept_pneumonia, distill_pneumonia, official_pneumonia, breast_init, breast_seeds or init_torch" >&2
        exit 2
        ;;
    esac
done
