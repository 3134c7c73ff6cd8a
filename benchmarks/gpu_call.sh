#!/usr/bin/env bash
# The GPU figures of issues 4 and 17 in one device call (one command inside the device's 10-minute limit).
#
# Here, before the call (no device time; .whl/ and .data/ are git-ignored, BraTS is never committed):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl open_clip_torch==3.3.0 ftfy wcwidth nibabel monai psygnal      # 7.6 MB: what the GPU image lacks
#   mkdir -p .data/brats && for p in ../shared/data/brats/pat*; do mkdir -p .data/brats/${p##*/};
#     cp $p/{flair,t1c,seg}.nii.gz .data/brats/${p##*/}/; done                # 37 MB: protocol A1 and the cohort
# The call (device tool): run(command="bash benchmarks/gpu_call.sh COMMIT LABEL", carry=[".whl", ".data"],
#   timeout_s=600); the JSON, the profile table and the log come back under $OUT. Here, after it:
#   cp <files_at>/gpu_speed_LABEL.json benchmarks/results/ && .venv/bin/python benchmarks/gpu_speed.py --report
#
# Sections, most wanted first (each is saved as soon as it ends, so a call cut short keeps what it measured):
# ceiling (10 s), upsample_step (training steps at batch 64 with each of four x2 upsamplings in the decoders, twice
# each, alternated: the previous engine's float32 resize against this one's in the same call, and each run's encoder
# images/s against the 40 % goal: about 2.5 min), cohort (20 BraTS volumes through `napari-uuds predict`: 2-3 min),
# profile (batch 64, then again with the copies' and resizes' origins), upsample (the resizes alone, four ways:
# seconds), ddp (DDP on one process against the plain run at batch 64, twice each: 2-3 min; last, because it is the
# first use of NCCL on that machine, and a hang there must not cost the others). The plain throughput section is
# left out: upsample_step's "engine" runs are its batch-64 runs.
#
# SECTIONS="..." runs others instead (a second call, if device time is left: SECTIONS=compile; torch.compile of the
# whole training step had not finished compiling after 105 s on the H200; its graph has no break, per
# torch._dynamo.explain on the CPU).
# SMOKE=1 runs the same sections tiny, on this machine's CPU, with this checkout's venv (checks the script).
set -uo pipefail
commit=${1:-unknown}
label=${2:-call}
out=${OUT:-/tmp/gpu_call_out}
mkdir -p "$out"
if [ -n "${SMOKE:-}" ]; then
    py=${PY:-.venv/bin/python}
    extra=(--smoke)
else
    py=${PY:-python3}
    extra=(--data .data --batches 32 64 --deadline 600)
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_call.sh: the wheels in .whl/ did not install"; exit 2; }
    export PYTHONPATH=/tmp/site
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
# 560 s: the sections must end (and their JSON be written) before the call's 600 s limit kills the command
timeout 560 "$py" benchmarks/gpu_speed.py "${extra[@]}" --label "$label" --commit "$commit" \
    --sections ${SECTIONS:-ceiling upsample_step cohort profile upsample ddp} --no-variants \
    --profile-table "$out/gpu_profile_$label.txt" --out "$out/gpu_speed_$label.json" 2>&1 | tee "$out/gpu_call_$label.log"
echo "gpu_call.sh: exit ${PIPESTATUS[0]}; files in $out"
