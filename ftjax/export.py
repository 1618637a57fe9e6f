"""Export a trained run: `python -m ftjax.export --workdir DIR --out OUT --format hf|peft|gguf
[--gguf_type f16|bf16|q8_0] [--checkpoint latest|best|base|STEP]`.

`--format hf` merges the method into plain weights (`method.merge`) and writes what
`transformers.AutoModel*.from_pretrained(OUT)` loads: config.json, model.safetensors and the
base checkpoint's tokenizer files; a sentence-embedding run (objective `embedding`) adds the
sentence-transformers files (`weights/sentence_transformers_files.py`), so
`SentenceTransformer(OUT)` pools and normalises as the run did. `--format peft` writes `adapter_config.json` +
`adapter_model.safetensors` that `peft.PeftModel.from_pretrained(base_model, OUT)` loads (lora,
dora, ia3, prompt_tuning, prefix_tuning). `--format gguf` (Llama family) merges as `hf` does and
writes OUT as one llama.cpp GGUF file with the tokenizer and chat template in its metadata
(`weights/gguf_export.py`), for llama.cpp, Ollama and LM Studio.

OUT is written atomically: everything goes to a temporary sibling directory that is renamed to
OUT at the end (the GGUF file is moved out of it), so OUT is either complete or absent. An
existing non-empty OUT is an error.
WORKDIR may be `gs://`; OUT is local only (an object store has no rename to make it appear
whole): copy it up afterwards, e.g. `gcloud storage cp -r OUT gs://...`.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil

from absl import app, flags
from absl import logging as absl_logging

from ftjax import train
from ftjax.errors import UserError, exit_on_user_error, parse_absl_flags
from ftjax.models import registry
from ftjax.paths import is_local
from ftjax.train.restore import load_workdir_config  # noqa: F401  (export.load_workdir_config, as before)
from ftjax.weights import gguf_export
from ftjax.weights import sentence_transformers_files

FORMATS = ("hf", "peft", "gguf")
# Files of a checkpoint directory that make up its tokenizer.
TOKENIZER_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*",
                      "merges.txt", "*.model", "spiece*", "chat_template*")

FLAGS = flags.FLAGS


def _copy_tokenizer(src: pathlib.Path, dst: pathlib.Path) -> list[str]:
  copied = []
  for pattern in TOKENIZER_PATTERNS:
    for file in sorted(src.glob(pattern)):
      if file.is_file() and not (dst / file.name).exists():
        shutil.copy2(file, dst / file.name)
        copied.append(file.name)
  return copied


def _prepare_out(out: pathlib.Path) -> pathlib.Path:
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise UserError(f"output '{out}' already exists and is not an empty directory")
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create the parent of output '{out}': {e.strerror}") from None
  tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  return tmp


def export(workdir: str, out: str, fmt: str, checkpoint: str = "latest",
           gguf_type: str = "f16") -> pathlib.Path:
  """Exports the run in `workdir` to `out` as `fmt` ('hf', 'peft' or 'gguf'); returns `out`."""
  if fmt not in FORMATS:
    raise UserError(f"unknown export format '{fmt}'; known: {', '.join(FORMATS)}")
  if fmt == "gguf" and gguf_type not in gguf_export.GGUF_TYPES:
    raise UserError(f"unknown --gguf_type '{gguf_type}'; known: {', '.join(gguf_export.GGUF_TYPES)}")
  if not is_local(out):
    raise UserError(f"--out '{out}' must be a local directory (export writes a directory and "
                    "renames it into place); copy it to the object store afterwards")
  cfg = load_workdir_config(workdir)
  checkpoint = train.parse_checkpoint(str(checkpoint))
  exp = train.build_experiment(cfg, optimizer=False)
  state, step = train.restore_state(exp, workdir, checkpoint)
  model = train.model_from_state(exp, state)
  method = exp.method

  # Check what the method can do before writing anything.
  if fmt == "gguf" and (cfg.model.task != "causal_lm" or
                        registry.read_hf_config(exp.model_path).get("model_type") != "llama"):
    raise UserError(f"GGUF export covers Llama-family causal LMs; this run is a "
                    f"{registry.read_hf_config(exp.model_path).get('model_type')} "
                    f"{cfg.model.task} model")
  if fmt in ("hf", "gguf"):
    model = method.merge(model)
    if model is None:
      raise UserError(f"method '{cfg.method.name}' cannot be merged into plain weights; "
                      "export it with --format peft" + (
                          "" if hasattr(method, "export_peft") else " (not supported either)"))
  elif not hasattr(method, "export_peft"):
    raise UserError(f"method '{cfg.method.name}' has no PEFT format; use --format hf")

  out_path = pathlib.Path(out).expanduser()
  tmp = _prepare_out(out_path)
  try:
    if fmt == "hf":
      labels = getattr(exp.dataset, "label_names", None)
      id2label = dict(enumerate(labels)) if labels and cfg.model.task in (
          "classification", "token_classification") else None
      registry.save_hf(model, tmp, id2label=id2label,
                       problem_type=getattr(exp.task, "PROBLEM_TYPE", None))
      _copy_tokenizer(pathlib.Path(exp.model_path), tmp)
      if getattr(exp.task, "MODEL_TASK", "") == "base":  # a sentence-embedding run
        opt, hf = exp.task.options, registry.read_hf_config(tmp)
        sentence_transformers_files.write(
            tmp, hidden_size=hf.get("hidden_size", hf.get("dim")),  # DistilBERT's is `dim`
            pooling=opt.pooling, normalize=opt.normalize, max_seq_length=cfg.data.max_length)
    elif fmt == "gguf":
      hf_dir = tmp / "hf"
      hf_dir.mkdir()
      registry.save_hf(model, hf_dir)
      _copy_tokenizer(pathlib.Path(exp.model_path), hf_dir)
      written = gguf_export.write_gguf(hf_dir, tmp / out_path.name, gguf_type,
                                       name=f"{out_path.stem} ({cfg.method.name}, step {step})")
      if out_path.exists():
        out_path.rmdir()  # empty (checked above)
      os.replace(written, out_path)
    else:
      method.export_peft(model, tmp, base_path=str(exp.model_path))
    if fmt != "gguf":
      if out_path.exists():
        out_path.rmdir()  # empty (checked above)
      os.replace(tmp, out_path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  print(f"ftjax: exported step {step} of {workdir} ({cfg.method.name}) as {fmt} to {out_path}",
        flush=True)
  return out_path


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("ftjax").setLevel(logging.WARNING)
  with exit_on_user_error():
    export(FLAGS.workdir, FLAGS.out, FLAGS.format, FLAGS.checkpoint, FLAGS.gguf_type)


def run() -> None:
  flags.DEFINE_string("workdir", None, "The run's workdir (holds config.json and checkpoints/).",
                      required=True)
  flags.DEFINE_string("out", None, "Output directory (must not exist or be empty).", required=True)
  flags.DEFINE_enum("format", "hf", FORMATS, "hf: merged transformers model; peft: PEFT adapter; "
                    "gguf: one llama.cpp GGUF file (Llama family).")
  flags.DEFINE_enum("gguf_type", "f16", list(gguf_export.GGUF_TYPES),
                    "Matrix type of --format gguf (vectors stay F32).")
  flags.DEFINE_string("checkpoint", "latest", "latest, best, base (step 0) or a step number.")
  app.run(main, flags_parser=parse_absl_flags)


if __name__ == "__main__":
  run()
