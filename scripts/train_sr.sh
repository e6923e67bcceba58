#!/usr/bin/env bash
# The SR weights' recipe in one go: stage 1 (autoencoder + implicit decoder), stage 2 (SR latent
# diffusion), stage 3 (1-step alignment, anchored, decoders tuned), stage 4 (an LR-reading implicit
# decoder on stage 3's 1-step estimate: the fidelity mode) and stage 5 (the detail mode's decoder
# head, trained on true latents: the shipped two-mode model), each for a wall-clock budget.
# The detail model (an earlier release) is the stage-2 model, anchored, sampling 20 steps.
#
#   scripts/train_sr.sh TRAIN_DIR VAL_DIR RUN_DIR [EXPORT_DIR]
#
# Environment: AE_MIN, SR_MIN, ALIGN_MIN, DEC_MIN, HEAD_MIN (minutes per stage); BATCH (stages 1-2),
# ALIGN_BATCH, ALIGN_LR, DEC_BATCH, HEAD_BATCH, HEAD_CROP; AE_INIT (a stage-1 model file: skip stage 1); SMOKE=1 (first run every stage for
# 2 steps, to fail fast); PY (python); EXTRA (flags for every stage, e.g. "--threads 2").
# EXPORT_DIR receives float16 copies of the models as each stage ends, and the logs.
set -euo pipefail
train=$1 val=$2 run=$3 export_dir=${4:-}
PY=${PY:-python}
BATCH=${BATCH:-128}
EXTRA=${EXTRA:-}
stage() { "$PY" -m arbscale_core.train "$@" $EXTRA; }
export_model() {  # export_model SRC NAME: a float16 copy in EXPORT_DIR
    [ -n "$export_dir" ] || return 0
    mkdir -p "$export_dir"
    "$PY" - "$1" "$export_dir/$2" <<'PYEOF'
import sys, torch
from arbscale_core.checkpoint import load_model, read_config, save_model
src, dst = sys.argv[1], sys.argv[2]
info = read_config(src)[1]
save_model(load_model(src), dst, training=info, dtype=torch.float16)
print("exported", dst)
PYEOF
}
common=(--data "$train" --val "$val" --steps 1000000 --log-every 100 --save-every 1000)

if [ "${SMOKE:-0}" = 1 ]; then
    s="$run/smoke"
    rm -rf "$s"
    stage autoencoder "${common[@]}" --out "$s/ae" --steps 2 --batch 8 --val-every 2
    stage diffusion --init "$s/ae/model.safetensors" "${common[@]}" --out "$s/sr" --steps 2 --batch 8 \
        --val-every 2 --val-steps 2 --x0-weight 1.0
    stage align --init "$s/sr/model.safetensors" "${common[@]}" --out "$s/regress" --steps 2 --batch 8 \
        --val-every 2 --val-steps 1 --x0-weight 1.0 --snr-min 1 --t-max-frac 1.0 --lambda-dm 0 \
        --tune-decoder --anchor --default-steps 1
    stage decoder --init "$s/regress/model.safetensors" --decoder-init "$s/ae/model.safetensors" "${common[@]}" \
        --out "$s/decoder" --steps 2 --batch 8 --crop 96 --val-every 2 --lr-scale-range 2 6
    stage decoder --init "$s/decoder/model.safetensors" --detail-head "${common[@]}" --out "$s/head" --steps 2 \
        --batch 8 --crop 96 --val-every 2 --lr-scale-range 2 12 --default-steps 1
    echo "smoke run passed"
fi

ae="${AE_INIT:-$run/ae/model.safetensors}"
if [ -z "${AE_INIT:-}" ]; then
stage autoencoder "${common[@]}" --out "$run/ae" --minutes "${AE_MIN:-3}" --batch "$BATCH" --crop 64 \
    --queries 32 --lr 5e-4 --warmup 200 --val-every 2000
export_model "$run/ae/model.safetensors" ae.safetensors
[ -z "$export_dir" ] || cp "$run/ae/log.csv" "$export_dir/ae_log.csv"
fi

stage diffusion --init "$ae" "${common[@]}" --out "$run/sr" --minutes "${SR_MIN:-2.2}" \
    --batch "$BATCH" --lr 3e-4 --warmup 200 --val-every 2000 --x0-weight 1.0
[ -z "$export_dir" ] || cp "$run/sr/log.csv" "$export_dir/sr_log.csv"
# The detail model: the stage-2 weights, anchored (no training: --steps 0), sampling 20 steps.
stage align --init "$run/sr/model.safetensors" --data "$train" --image-limit 1 --out "$run/detail" --steps 0 \
    --anchor --default-steps 20
export_model "$run/detail/model.safetensors" sr_detail.safetensors

# Stage 3 for the default model. (Before the anchor carried the decoders' gradient, lr 1.5e-4 at
# batch 64 diverged here on an H200; the shipped model ran this stage on a CPU at batch 16, first
# U-Net only, then with the decoders at lr 4e-4: see the model card.)
stage align --init "$run/sr/model.safetensors" "${common[@]}" --out "$run/regress" --minutes "${ALIGN_MIN:-1.8}" \
    --batch "${ALIGN_BATCH:-16}" --lr "${ALIGN_LR:-4e-4}" --warmup 30 --val-every 100 --val-steps 1 \
    --x0-weight 1.0 --snr-min 1 --t-max-frac 1.0 --lambda-dm 0 --tune-decoder --anchor --default-steps 1
export_model "$run/regress/model.safetensors" sr_aligned.safetensors
[ -z "$export_dir" ] || cp "$run/regress/log.csv" "$export_dir/regress_log.csv"

# Stage 4 for the default model (not in the paper): stage 3's U-Net and 1-step estimate, decoded
# by stage 1's decoders plus an LR-image encoder they learn to read (config lr_features).
stage decoder --init "$run/regress/model.safetensors" --decoder-init "$ae" "${common[@]}" --out "$run/decoder" \
    --minutes "${DEC_MIN:-2}" --batch "${DEC_BATCH:-16}" --crop 96 --lr 4e-4 --warmup 100 --val-every 500 \
    --lr-scale-range 2 6
export_model "$run/decoder/model.safetensors" sr_default.safetensors
[ -z "$export_dir" ] || cp "$run/decoder/log.csv" "$export_dir/decoder_log.csv"

# Stage 5 (not in the paper): the detail mode's decoder head, a copy of stage 4's trained alone on
# true latents (everything else frozen: the fidelity mode decodes exactly as stage 4's model).
stage decoder --init "$run/decoder/model.safetensors" --detail-head "${common[@]}" --out "$run/head" \
    --minutes "${HEAD_MIN:-2}" --batch "${HEAD_BATCH:-16}" --crop "${HEAD_CROP:-128}" --lr 2e-4 --warmup 50 --val-every 250 \
    --lr-scale-range 2 12 --default-steps 1 --detail-steps 20 --detail-eta 0.5
export_model "$run/head/model.safetensors" sr_two_mode.safetensors
[ -z "$export_dir" ] || cp "$run/head/log.csv" "$export_dir/head_log.csv"
echo "done"
