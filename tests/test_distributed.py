"""One config from 1 device to meshes of 8 fake devices and to 2 and 4 real processes.

Every run here is a subprocess (the device count is fixed when JAX starts): DP, FSDP, TP and a
mixed (2,2,2) mesh must give the 1-device parameters within 1e-5 after several steps;
checkpoints move between topologies; 2 and 4 processes joined with `jax.distributed` on 127.0.0.1
train like one (on rows of very different lengths: every process pads a batch to one length);
a SIGTERM to one process stops them all at one step, as a non-finite loss halts them all at one
step; SLURM's environment joins without flags; a packed chat run on 2 processes gives the
1-process losses and generation samples; a GRPO run on 2 processes samples and trains like 1.
"""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tiny_assets import make_conversations, make_sentiment_rows, make_tiny_llama, write_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6


def args(model, files, workdir, steps=STEPS, *extra):
  return [sys.executable, "-m", "ftjax.main", "--config=configs/classify_files.py", f"--workdir={workdir}",
          f"--config.model.checkpoint={model}", f"--config.data.files.train={files['train']}",
          f"--config.data.files.validation={files['validation']}", "--config.data.max_length=16",
          "--config.data.bucket_boundaries=(8,16)", f"--config.train.steps={steps}",
          "--config.train.batch_size=8", "--config.train.log_every_steps=1", "--config.eval.every_steps=3",
          "--config.eval.batch_size=16", "--config.checkpoint.every_steps=3", "--config.optimizer.lr=1e-3",
          *extra]


def run(cmd, devices=1, check=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def params_at(workdir, step):
  """The params of a checkpoint saved on any topology, restored onto this process's one device."""
  path = pathlib.Path(workdir) / "checkpoints" / str(step) / "state"
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        checkpointer.metadata(path).item_metadata)
  state = checkpointer.restore(path, target)
  return jax.tree.map(np.asarray, state["params"])


def train_losses(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(l)["loss"] for l in lines if '"train"' in l]


def assert_close(a, b, atol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, atol=atol)


@pytest.fixture(scope="module")
def varied_files(tmp_path_factory):
  """The tiny sentiment task with rows of very different lengths: every odd row is ~4x longer,
  so with 2 processes each eval shard (rows i::2) holds only short or only long rows and the
  processes' batches fall in different length buckets unless they agree on one."""
  root = tmp_path_factory.mktemp("varied")
  def vary(rows):
    return [{**r, "text": r["text"] + " really quite very" * 4} if i % 7 == 1 else r
            for i, r in enumerate(rows)]
  return {"train": write_jsonl(root / "train.jsonl", vary(make_sentiment_rows(96, seed=0))),
          "validation": write_jsonl(root / "dev.jsonl", vary(make_sentiment_rows(40, seed=1)))}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_bert_dir, varied_files):
  workdir = tmp_path_factory.mktemp("one_device") / "run"
  run(args(tiny_bert_dir, varied_files, workdir))
  return workdir


@pytest.mark.parametrize("mesh", ["(8,1,1)", "(1,8,1)", "(1,1,8)", "(2,2,2)"],
                         ids=["data", "fsdp", "tensor", "mixed"])
def test_meshes_of_8_devices_match_one_device(tmp_path, tiny_bert_dir, varied_files, baseline, mesh):
  workdir = tmp_path / "run"
  run(args(tiny_bert_dir, varied_files, workdir, STEPS, f"--config.mesh.shape={mesh}"), devices=8)
  np.testing.assert_allclose(train_losses(workdir), train_losses(baseline), atol=1e-5)
  assert_close(params_at(workdir, STEPS), params_at(baseline, STEPS))


def resume_from_copy(source_workdir, workdir, model, files, devices, mesh):
  """Continues `source_workdir`'s step-3 checkpoint in a new workdir on another topology."""
  import shutil
  shutil.copytree(pathlib.Path(source_workdir) / "checkpoints" / "3", workdir / "checkpoints" / "3")
  result = run(args(model, files, workdir, STEPS, f"--config.mesh.shape={mesh}"), devices=devices)
  assert "resumed from step 3" in result.stdout


def test_checkpoints_move_between_8_devices_and_1(tmp_path, tiny_bert_dir, varied_files, baseline):
  # 1 device -> 8 devices (FSDP x TP) from the baseline's step-3 checkpoint.
  resume_from_copy(baseline, tmp_path / "1to8", tiny_bert_dir, varied_files, 8, "(1,4,2)")
  assert_close(params_at(tmp_path / "1to8", STEPS), params_at(baseline, STEPS))
  # 8 devices -> 1 device.
  eight = tmp_path / "eight"
  run(args(tiny_bert_dir, varied_files, eight, STEPS, "--config.mesh.shape=(1,4,2)"), devices=8)
  resume_from_copy(eight, tmp_path / "8to1", tiny_bert_dir, varied_files, 1, "(1,1,1)")
  assert_close(params_at(tmp_path / "8to1", STEPS), params_at(baseline, STEPS))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(command: list[str], processes: int, workdir: pathlib.Path, timeout=600):
  """Runs `command` as processes 0..N-1 joined on 127.0.0.1; returns each one's (stdout,
  stderr) after asserting that all exited 0. A process that fails stops the others at once:
  they would otherwise wait for it in a collective until the timeout."""
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  logs = [(workdir.parent / f"{workdir.name}.p{i}.out", workdir.parent / f"{workdir.name}.p{i}.err")
          for i in range(processes)]
  procs = []
  for i, (out, err) in enumerate(logs):
    with out.open("w") as o, err.open("w") as e:  # files, not pipes: a full pipe stalls a process
      procs.append(subprocess.Popen(
          command + [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}",
                     f"--process_id={i}"], cwd=REPO, env=env, stdout=o, stderr=e, text=True))
  deadline = time.time() + timeout
  while any(p.poll() is None for p in procs) and time.time() < deadline:
    if any(p.poll() not in (None, 0) for p in procs):
      break
    time.sleep(0.5)
  for p in procs:
    if p.poll() is None:
      p.kill()
    p.wait()
  outputs = [(out.read_text(), err.read_text()) for out, err in logs]
  for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
    others = "".join(f"\nprocess {j}:\n{e[-1500:]}" for j, (_, e) in enumerate(outputs) if j != i)
    assert p.returncode == 0, f"process {i} (exit {p.returncode}):\n{err[-2000:]}{others}"
  return outputs


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_train_like_one(tmp_path, tiny_bert_dir, varied_files, baseline, processes):
  workdir = tmp_path / "run"
  # FSDP across the processes: a parameter's shards live on different hosts, so the processes
  # run one program whose collectives need every host's batch at one shape.
  outputs = run_processes(args(tiny_bert_dir, varied_files, workdir, STEPS,
                               f"--config.mesh.shape=(1,{processes},1)"), processes, workdir)
  assert "ftjax: step 6: eval" in outputs[0][0]
  # Each process read only the slices its device holds: about 1/N of the checkpoint (the
  # vectors without an `embed` axis are replicated, so each reads those whole).
  total = sum(f.stat().st_size for f in pathlib.Path(tiny_bert_dir).glob("*.safetensors"))
  for i, (out, _) in enumerate(outputs):
    read = int(re.search(rf"process {i} read ([\d,]+) bytes", out).group(1).replace(",", ""))
    assert (1 / processes - 0.05) * total < read <= (1 / processes + 0.05) * total, (i, read, total)
  # Process 0 alone writes the summary and the end-of-run report (from the workdir's files).
  assert (workdir / "summary.json").is_file() and "![loss]" in (workdir / "report.md").read_text()
  np.testing.assert_allclose(train_losses(workdir), train_losses(baseline), atol=1e-5)
  assert_close(params_at(workdir, STEPS), params_at(baseline, STEPS))


def test_a_non_finite_loss_halts_every_process_at_the_same_step(tmp_path, tiny_bert_dir,
                                                                varied_files):
  # A learning rate of 1e12 drives the loss to inf/NaN within a few steps; the count of skipped
  # updates is a replicated value of the one global program, so both processes see it at the
  # same step, stop there with the same error and exit 1 (train.on_nan=halt).
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  procs = [subprocess.Popen(
      args(tiny_bert_dir, varied_files, tmp_path / "run", 12, "--config.mesh.shape=(1,2,1)",
           "--config.optimizer.lr=1e12") +
      [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  steps = [re.search(r"non-finite loss or gradients at step (\d+)", out) for out in outputs]
  assert all(steps), outputs[0][-2000:] + outputs[1][-2000:]
  assert steps[0].group(1) == steps[1].group(1), [m.group(0) for m in steps]
  assert [p.returncode for p in procs] == [1, 1]


def test_sigterm_to_one_process_saves_every_process_at_the_same_step(
    tmp_path, tiny_bert_dir, varied_files, baseline):
  workdir = tmp_path / "run"
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
             PYTHONUNBUFFERED="1")

  def launch():
    return [subprocess.Popen(
        args(tiny_bert_dir, varied_files, workdir) +
        [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]

  procs = launch()
  # Process 1 prints its parameter count once both processes joined, compiled the step and built
  # the model, before the first step: a SIGTERM from then on lands inside the run, on process 1 alone.
  seen = []
  for line in procs[1].stdout:
    seen.append(line)
    if line.startswith("ftjax: method"):
      procs[1].send_signal(signal.SIGTERM)
      break
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  outputs[1] = "".join(seen) + outputs[1]
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i}:\n{outputs[i][-2000:]}"
  stopped = [re.search(r"preempted \(signal \d+\) at step (\d+)", out) for out in outputs]
  assert all(stopped), outputs
  step = int(stopped[0].group(1))
  assert step == int(stopped[1].group(1)) < STEPS  # every process stopped at the same step
  assert ocp.CheckpointManager(workdir / "checkpoints").latest_step() == step

  procs = launch()  # the rerun resumes and ends where an uninterrupted run does
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"process {i}:\n{outputs[i][-2000:]}"
  assert f"resumed from step {step}" in outputs[0]


def slurm_env(job_id: int, task: int, ntasks: int) -> dict[str, str]:
  """What `srun --ntasks=N` on one node named localhost puts in task `task`'s environment."""
  return {"SLURM_JOB_ID": str(job_id), "SLURM_JOBID": str(job_id), "SLURM_STEP_ID": "0",
          "SLURM_NTASKS": str(ntasks), "SLURM_NPROCS": str(ntasks), "SLURM_STEP_NUM_TASKS": str(ntasks),
          "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task), "SLURM_NODEID": "0",
          "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1", "SLURM_STEP_NUM_NODES": "1",
          "SLURM_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost",
          "SLURM_STEP_NODELIST": "localhost", "SLURMD_NODENAME": "localhost",
          "SLURM_TASKS_PER_NODE": str(ntasks), "SLURM_STEP_TASKS_PER_NODE": str(ntasks)}


def slurm_job_id_with_free_port() -> int:
  """A job id whose coordinator port is free: jax's SLURM detection uses port
  61440 + job_id % 4096 (on the first node of SLURM_STEP_NODELIST)."""
  for port in range(61440, 65536):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
    return 4096 * 1000 + port - 61440
  raise RuntimeError("no free port in 61440-65535")


def test_slurm_environment_is_detected(monkeypatch):
  from ftjax import sharding
  for key in list(os.environ):
    if key.startswith(("SLURM_", "OMPI_", "KUBERNETES_", "TPU_", "MEGASCALE_")):
      monkeypatch.delenv(key)
  assert sharding.detected_cluster() is None
  for key, value in slurm_env(12345, 1, 2).items():
    monkeypatch.setenv(key, value)
  assert sharding.detected_cluster() == ("slurm", 2)
  monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task step (or `srun -n1`) stays one process
  assert sharding.detected_cluster() == ("slurm", 1)


def test_two_srun_tasks_join_without_flags(tmp_path, tiny_bert_dir, varied_files, baseline):
  # Two processes with the environment `srun --ntasks=2` gives them and no coordinator flags.
  workdir = tmp_path / "run"
  job_id = slurm_job_id_with_free_port()
  base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_COORDINATOR"))}
  procs = [subprocess.Popen(
      args(tiny_bert_dir, varied_files, workdir), cwd=REPO,
      env=dict(base, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               **slurm_env(job_id, i, 2)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for i, (p, (out, err)) in enumerate(zip(procs, outputs)):
    assert p.returncode == 0, f"process {i}:\n{err[-2000:]}\nother process:\n{outputs[1 - i][1][-2000:]}"
    assert f"ftjax: joined a 2-process run (slurm) as process {i}" in out
  assert "ftjax: step 6: eval" in outputs[0][0]
  # Data parallel (the default mesh): each process holds every parameter whole, so it reads the
  # whole checkpoint's tensors (the header is not counted).
  total = sum(f.stat().st_size for f in pathlib.Path(tiny_bert_dir).glob("*.safetensors"))
  for i, (out, _) in enumerate(outputs):
    read = int(re.search(rf"process {i} read ([\d,]+) bytes", out).group(1).replace(",", ""))
    assert 0.95 * total < read <= total, (i, read, total)
  np.testing.assert_allclose(train_losses(workdir), train_losses(baseline), atol=1e-5)
  assert_close(params_at(workdir, STEPS), params_at(baseline, STEPS))


def test_packed_chat_on_two_processes_trains_and_samples_like_one(tmp_path):
  # Conversations of very different lengths (every 5th ~6x longer), packed: the global batch and
  # its length must not depend on the process count. Generation runs as one program over the
  # FSDP-sharded model on every process; process 0 alone writes the samples.
  model = make_tiny_llama(tmp_path / "llama")
  rows = [{"messages": [m if m["role"] == "user" or i % 5 else
                        {**m, "content": " ".join([m["content"]] * 6)} for m in r["messages"]]}
          for i, r in enumerate(make_conversations(40, 0))]
  files = {"train": write_jsonl(tmp_path / "train.jsonl", rows),
           "validation": write_jsonl(tmp_path / "dev.jsonl", make_conversations(8, 1))}
  def chat_args(workdir, mesh):
    return [sys.executable, "-m", "ftjax.main", "--config=configs/classify_files.py",
            f"--workdir={workdir}", f"--config.model.checkpoint={model}",
            "--config.model.task=causal_lm", "--config.data.name=chat_files",
            f"--config.data.files.train={files['train']}",
            f"--config.data.files.validation={files['validation']}", "--config.data.packing=True",
            "--config.data.max_length=32", "--config.data.bucket_boundaries=(16,32)",
            "--config.train.steps=4", "--config.train.batch_size=4", "--config.train.log_every_steps=1",
            "--config.eval.every_steps=4", "--config.eval.batch_size=4", "--config.eval.metric=loss",
            "--config.eval.mode=min", "--config.eval.num_samples=3",
            "--config.eval.sample_max_new_tokens=4", "--config.checkpoint.every_steps=4",
            "--config.optimizer.lr=1e-2", f"--config.mesh.shape={mesh}"]
  run(chat_args(tmp_path / "one", "(1,1,1)"))
  run_processes(chat_args(tmp_path / "two", "(1,2,1)"), 2, tmp_path / "two")
  np.testing.assert_allclose(train_losses(tmp_path / "two"), train_losses(tmp_path / "one"), atol=1e-5)
  samples = {n: [json.loads(l) for l in (tmp_path / n / "samples.jsonl").read_text().splitlines()]
             for n in ("one", "two")}
  assert [s["checkpoint"] for s in samples["two"]] == ["base"] * 3 + ["final"] * 3  # written once
  assert samples["two"] == samples["one"]
  assert "![loss]" in (tmp_path / "two" / "report.md").read_text()


def test_grpo_on_two_processes_samples_and_trains_like_one(tmp_path):
  # The rollout phase on 2 processes: each gathers the global batch's prompts, samples all of them
  # on the FSDP-sharded policy and keeps its rows; the old policy's log-probs (2 updates per
  # rollout) are gathered the same way. Rewards, losses and the eval must be those of 1 process.
  model = make_tiny_llama(tmp_path / "llama")
  prompts = [{"prompt": c["messages"][0]["content"]} for c in make_conversations(24, 0)]
  files = {"train": write_jsonl(tmp_path / "train.jsonl", prompts),
           "validation": write_jsonl(tmp_path / "dev.jsonl", prompts[:4])}
  def grpo_args(workdir, mesh):
    return [sys.executable, "-m", "ftjax.main", "--config=configs/classify_files.py",
            f"--workdir={workdir}", f"--config.model.checkpoint={model}",
            "--config.model.task=causal_lm", "--config.objective.name=grpo",
            "--config.objective.grpo.num_generations=4", "--config.objective.grpo.max_new_tokens=5",
            "--config.objective.grpo.num_iterations=2", "--config.objective.grpo.beta=0.1",
            "--config.objective.grpo.rewards=('positive_share',)",
            f"--config.objective.grpo.reward_modules=('{REPO / 'tests' / 'grpo_rewards.py'}',)",
            "--config.data.name=prompt_files", f"--config.data.files.train={files['train']}",
            f"--config.data.files.validation={files['validation']}", "--config.data.max_length=24",
            "--config.train.steps=4", "--config.train.batch_size=4", "--config.train.log_every_steps=1",
            "--config.eval.every_steps=4", "--config.eval.batch_size=4", "--config.eval.metric=reward",
            "--config.eval.num_samples=0", "--config.checkpoint.every_steps=4",
            "--config.optimizer.lr=5e-2", "--config.method.name=lora", f"--config.mesh.shape={mesh}"]
  run(grpo_args(tmp_path / "one", "(1,1,1)"))
  run_processes(grpo_args(tmp_path / "two", "(1,2,1)"), 2, tmp_path / "two")
  rows = {n: [json.loads(l) for l in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
          for n in ("one", "two")}
  train_rows = {n: [r for r in v if r["split"] == "train"] for n, v in rows.items()}
  for a, b in zip(train_rows["one"], train_rows["two"], strict=True):
    assert a["reward"] == b["reward"] and a["completion_length"] == b["completion_length"], (a, b)
    np.testing.assert_allclose(b["loss"], a["loss"], atol=1e-5)
  assert train_rows["one"][0]["reward_group_std"] > 0
  evals = {n: [r for r in v if r["split"] == "eval"][-1] for n, v in rows.items()}
  assert evals["one"]["reward"] == evals["two"]["reward"]
