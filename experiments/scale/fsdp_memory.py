"""Per-device bytes of parameters + optimizer state under FSDP, on N fake CPU devices.

  python experiments/scale/fsdp_memory.py            # MiniLM (real weights), N = 1, 2, 4, 8
  python experiments/scale/fsdp_memory.py configs/quickstart.py:qlora   # any config

Each N runs in a fresh process (the device count is fixed when JAX starts). It builds the
quickstart experiment with `mesh.shape=(1, N, 1)` and sums, for device 0, the bytes of the
shards it holds of `params`, `frozen` and `opt_state`. With FSDP the figure should fall as 1/N
for every tensor whose `embed` dimension N divides.
"""

import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, jax
from ftjax import train
from ftjax.config import load_config
n = int(sys.argv[1])
cfg = load_config(sys.argv[2], [f"mesh.shape=(1,{n},1)"])
exp = train.build_experiment(cfg)
dev = jax.devices()[0]
def bytes_on(tree):
  total = 0
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      if shard.device == dev:
        total += shard.data.nbytes
  return total
print(json.dumps({"devices": n, "params": bytes_on(exp.state.params) + bytes_on(exp.state.frozen),
                  "opt_state": bytes_on(exp.state.opt_state)}))
"""


def main():
  config = sys.argv[1] if len(sys.argv) > 1 else "configs/quickstart.py"
  rows = []
  for n in (1, 2, 4, 8):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), config], env=env, capture_output=True, text=True,
                         check=True).stdout
    rows.append(json.loads(out.strip().splitlines()[-1]))
  base = rows[0]["params"] + rows[0]["opt_state"]
  print("| devices (fsdp) | params MiB / device | optimizer MiB / device | total vs 1 device | ideal 1/N |")
  print("|---|---|---|---|---|")
  for r in rows:
    total = r["params"] + r["opt_state"]
    print(f"| {r['devices']} | {r['params'] / 2**20:.1f} | {r['opt_state'] / 2**20:.1f} | "
          f"{total / base:.3f} | {1 / r['devices']:.3f} |")


if __name__ == "__main__":
  main()
