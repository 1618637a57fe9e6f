#!/usr/bin/env bash
# The accelerator table of README.md: bfloat16 on both sides (fp32 would compare TF32 in XLA
# with strict fp32 in PyTorch), an 8192^3 bf16 matmul peak, the CPU rows plus GPU-sized ones.
#   bash experiments/bench/run_gpu.sh OUTDIR [extra run.py flags]
set -u
out=${1:?usage: run_gpu.sh OUTDIR [run.py flags]}
shift
mkdir -p "$out"
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  > "$out/gpu.txt" 2>&1
python3 -c "import jax, flax, torch, transformers, peft; print(jax.devices(), 'jax', jax.__version__,
  'flax', flax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__,
  'peft', peft.__version__)" >> "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
rows=minilm_full,minilm_lora,smollm2_full,smollm2_lora,gen_b1,gen_b8
rows=$rows,smollm2_full_16x1024,smollm2_lora_16x1024,gen_b64
python3 "$here/run.py" --dtype=bfloat16 --peak_n=8192 --timeout=240 --only=$rows \
  --workdir=/tmp/ftjax_bench --out="$out/gpu_bf16.json" "$@" 2>&1 | tee "$out/gpu_bf16.log"
# The decoder rows again with cuDNN's fused attention (ftjax only; BERT has no such option), and
# the check that it computes the same step as the default attention.
python3 "$here/run.py" --dtype=bfloat16 --skip_peak --frameworks=ftjax --timeout=240 \
  --only=smollm2_full,smollm2_lora,smollm2_full_16x1024,smollm2_lora_16x1024 \
  --ftjax_config=model.attention=cudnn --workdir=/tmp/ftjax_bench \
  --out="$out/gpu_bf16_cudnn.json" "$@" 2>&1 | tee "$out/gpu_bf16_cudnn.log"
python3 "$here/cudnn_attention_check.py" --workdir=/tmp/ftjax_bench 2>&1 | tee "$out/cudnn_check.log"
tar czf "$out/logs.tgz" -C /tmp/ftjax_bench logs
