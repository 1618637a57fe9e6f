"""Methods under a sharded mesh: 4 fake CPU devices, FSDP x tensor parallel vs data parallel.

Adapters carry the logical axes of the kernel they adapt, so the trainer's logical-axis rules
shard them like their kernel; the steps must give the same losses as pure data parallelism.
Runs in a subprocess because the fake device count is fixed when JAX starts.
"""

import json
import os
import pathlib
import subprocess
import sys

SCRIPT = r"""
import json, sys
sys.path[:0] = sys.argv[1:3]
import jax
from method_harness import tiny_config, run_method
files = json.loads(sys.argv[4])
out = {}
for method, options in [("lora", dict(rank=4)), ("qlora", dict(rank=4, block_size=32)),
                        ("prefix_tuning", dict(num_virtual_tokens=3))]:
  for shape in [(4, 1, 1), (1, 2, 2)]:
    cfg = tiny_config(sys.argv[3], files, method=method, steps=2, **options)
    cfg.mesh.shape = shape
    run = run_method(cfg)
    specs = [str(x.sharding.spec) for x in jax.tree.leaves(run.final.params)]
    out[f"{method}{shape}"] = [run.loss_before, run.loss_after, specs]
print("RESULT " + json.dumps(out))
"""


def test_methods_give_the_same_steps_on_fsdp_and_tensor_parallel_meshes(tiny_bert_dir,
                                                                         tiny_sentiment_files):
  here = pathlib.Path(__file__).parent
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  files = json.dumps({k: str(v) for k, v in tiny_sentiment_files.items()})
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(here), str(here.parent),
                         str(tiny_bert_dir), files], capture_output=True, text=True, env=env,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
  result = json.loads(line[len("RESULT "):])
  for method in ("lora", "qlora", "prefix_tuning"):
    dp, sharded = result[f"{method}(4, 1, 1)"], result[f"{method}(1, 2, 2)"]
    assert abs(dp[0] - sharded[0]) < 1e-5 and abs(dp[1] - sharded[1]) < 1e-5, (method, dp, sharded)
    assert dp[1] < dp[0]
  # LoRA's A follows the kernel's input axis (fsdp), B its output axis (tensor).
  assert "P('fsdp',)" in result["lora(1, 2, 2)"][2]
  assert "P(None, 'tensor')" in result["lora(1, 2, 2)"][2]
