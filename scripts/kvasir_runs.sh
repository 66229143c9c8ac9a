#!/bin/bash
# The Kvasir-SEG runs of docs/results/segmentation_kvasir.md: 880 train images (10% carved out for validation,
# seeded, Kvasir-SEG's own rule in segfolder:) and the authors' 120 test images, stored at 112 px, every
# backbone randomly initialised (no pretrained weights on the machine that ran them), fp32 on a 2-core CPU.
#   KVASIR=../shared/data/segmentation/kvasir-seg bash scripts/kvasir_runs.sh runs/kvasir
#   python scripts/kvasir_table.py --runs runs/kvasir --figures docs/results/segmentation_kvasir
# One BLAS thread per process: on a 2-core machine shared with other work, two threads per op made the
# small ops of a segmentation head ~20x slower (thread oversubscription); with one thread each, two of
# these commands run side by side.
set -euo pipefail
OUT=${1:-runs/kvasir}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
DS="segfolder:${KVASIR:-../shared/data/segmentation/kvasir-seg}?size=112"
VIT="timm:vit_small_patch14_dinov2"   # the DINOv2 ViT-S/14 architecture
COMMON=(--dataset "$DS" --no-pretrained --img-size 112 --no-autocast)
medadapt probe "${COMMON[@]}" --backbone $VIT --head linear --lrs 1e-2 1e-3 1e-4 --epochs 40 --batch-size 16 --out "$OUT/vit_probe_linear"
medadapt probe "${COMMON[@]}" --backbone $VIT --head multiscale --lrs 1e-2 1e-3 1e-4 --epochs 40 --batch-size 16 --out "$OUT/vit_probe_multiscale"
medadapt finetune "${COMMON[@]}" --backbone "smp:unet?encoder=resnet34" --head native --strategy scratch --lr 1e-3 --epochs 15 --batch-size 16 --augment light --out "$OUT/unet_scratch" --resume
medadapt finetune "${COMMON[@]}" --backbone $VIT --head linear --strategy differential --lr 1e-3 --epochs 8 --batch-size 16 --augment light --out "$OUT/vit_differential" --resume
medadapt finetune "${COMMON[@]}" --backbone $VIT --head linear --strategy lora --lr 1e-3 --epochs 8 --batch-size 16 --augment light --out "$OUT/vit_lora" --resume
