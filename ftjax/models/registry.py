"""Model families by HF `model_type`: build from and save to HF checkpoints.

A family is one `Family` entry in `_FAMILIES`: how to read its config, build
its model class for a task, which weight table each class uses and the HF
architecture name it exports as. Adding Llama or GPT-2 is one entry.

Tasks: 'base' (the bare encoder), 'classification' (sequence classification
head, like `AutoModelForSequenceClassification`: BERT's pooler + classifier, a
decoder's `score` on its last real token), 'token_classification' (a label per token, like
`AutoModelForTokenClassification`), 'multiple_choice' (a score per (prompt, choice) row, like
`AutoModelForMultipleChoice`), 'question_answering' (answer-span start and end logits, like
`AutoModelForQuestionAnswering`) and 'causal_lm' (decoder with an LM head, like
`AutoModelForCausalLM`). A family lists the tasks it has; asking one for another names them.

`model_spec` reads a checkpoint's `config.json` into a `ModelSpec` (how to build the
model, its weight table) before any weight is read; training builds the model sharded from it
(`ftjax.train.construct`). `build_model` builds and loads one whole model eagerly (tools,
tests); `build_from_tensors` does the same from an HF config dict and HF-named tensors in
memory, without touching disk.
"""

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable

from flax import nnx
import jax.numpy as jnp

from ftjax.errors import UserError
from ftjax.models import bert
from ftjax.models import deberta
from ftjax.models import distilbert
from ftjax.models import gemma
from ftjax.models import gpt2
from ftjax.models import llama
from ftjax.models import modernbert
from ftjax.models import moe as moe_lib
from ftjax.models import rope as rope_lib
from ftjax.weights import bert_table
from ftjax.weights import deberta_table
from ftjax.weights import distilbert_table
from ftjax.weights import gemma_table
from ftjax.weights import gpt2_table
from ftjax.weights import llama_table
from ftjax.weights import modernbert_table
from ftjax.weights import safetensors_io

CONFIG_FILE = 'config.json'
TASKS = ('base', 'classification', 'causal_lm', 'token_classification', 'multiple_choice',
         'question_answering')
LABELLED_TASKS = ('classification', 'token_classification')  # built with `num_labels`


@dataclasses.dataclass(frozen=True)
class Family:
  """How to build, load and save one HF model family."""
  config_cls: type  # has from_hf(dict) / to_hf() and a `model_type`
  # task -> (model class, weight table or config -> table, HF architecture)
  classes: dict[str, tuple[type, Any, str]]
  # (config, task, num_labels, dtype, param_dtype, rngs, **options) -> model, where the
  # options are the model classes' `remat` and `attention` constructor arguments, and `moe`
  # (`moe.MoeOptions`) for a config with experts
  build: Callable[..., nnx.Module]


def _builder(**classes):
  """A family's `build`: the class of each task (`classification=...`); the labelled tasks'
  classes take `num_labels` after the config."""
  def build(config, task, num_labels, dtype, param_dtype, rngs, **options):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, **options)
    if task in LABELLED_TASKS:
      return classes[task](config, num_labels, **kw)
    return classes[task](config, **kw)
  return build


def _family_of_classes(config_cls, classes: dict[str, tuple[type, Any, str]]) -> Family:
  return Family(config_cls=config_cls, classes=classes,
                build=_builder(**{task: entry[0] for task, entry in classes.items()}))


def _roberta_family(config_cls, prefix: str) -> Family:
  return _family_of_classes(config_cls, {
      'base': (bert.BertModel, bert_table.ROBERTA_BASE, f'{prefix}Model'),
      'classification': (bert.RobertaForSequenceClassification,
                         bert_table.ROBERTA_SEQUENCE_CLASSIFICATION,
                         f'{prefix}ForSequenceClassification'),
      'token_classification': (bert.RobertaForTokenClassification,
                               bert_table.ROBERTA_TOKEN_CLASSIFICATION,
                               f'{prefix}ForTokenClassification'),
      'multiple_choice': (bert.RobertaForMultipleChoice, bert_table.ROBERTA_MULTIPLE_CHOICE,
                          f'{prefix}ForMultipleChoice'),
      'question_answering': (bert.RobertaForQuestionAnswering,
                             bert_table.ROBERTA_QUESTION_ANSWERING,
                             f'{prefix}ForQuestionAnswering')})


def _llama_family(prefix: str) -> Family:
  return _family_of_classes(llama.LlamaConfig, {
      'causal_lm': (llama.LlamaForCausalLM, llama_table.causal_lm_table, f'{prefix}ForCausalLM'),
      'classification': (llama.LlamaForSequenceClassification,
                         llama_table.sequence_classification_table,
                         f'{prefix}ForSequenceClassification'),
      'token_classification': (llama.LlamaForTokenClassification,
                               llama_table.token_classification_table,
                               f'{prefix}ForTokenClassification')})


def _gemma_family(prefix: str, classifier: str, token_classifier: str | None) -> Family:
  classes = {
      'causal_lm': (gemma.GemmaForCausalLM, gemma_table.causal_lm_table, f'{prefix}ForCausalLM'),
      'classification': (gemma.GemmaForSequenceClassification,
                         gemma_table.SEQUENCE_CLASSIFICATION, classifier)}
  if token_classifier:  # transformers has one for Gemma 2, none for Gemma 3
    classes['token_classification'] = (gemma.GemmaForTokenClassification,
                                       gemma_table.TOKEN_CLASSIFICATION, token_classifier)
  return _family_of_classes(gemma.GemmaConfig, classes)


_FAMILIES: dict[str, Family] = {
    'bert': _family_of_classes(bert.BertConfig, {
        'base': (bert.BertModel, bert_table.BASE, 'BertModel'),
        'classification': (bert.BertForSequenceClassification,
                           bert_table.SEQUENCE_CLASSIFICATION, 'BertForSequenceClassification'),
        'token_classification': (bert.BertForTokenClassification,
                                 bert_table.TOKEN_CLASSIFICATION, 'BertForTokenClassification'),
        'multiple_choice': (bert.BertForMultipleChoice, bert_table.MULTIPLE_CHOICE,
                            'BertForMultipleChoice'),
        'question_answering': (bert.BertForQuestionAnswering, bert_table.QUESTION_ANSWERING,
                               'BertForQuestionAnswering')}),
    'deberta-v2': _family_of_classes(deberta.DebertaV2Config, {
        'base': (deberta.DebertaV2Model, deberta_table.base_table, 'DebertaV2Model'),
        'classification': (deberta.DebertaV2ForSequenceClassification,
                           deberta_table.sequence_classification_table,
                           'DebertaV2ForSequenceClassification'),
        'token_classification': (deberta.DebertaV2ForTokenClassification,
                                 deberta_table.token_classification_table,
                                 'DebertaV2ForTokenClassification'),
        'multiple_choice': (deberta.DebertaV2ForMultipleChoice,
                            deberta_table.multiple_choice_table, 'DebertaV2ForMultipleChoice'),
        'question_answering': (deberta.DebertaV2ForQuestionAnswering,
                               deberta_table.question_answering_table,
                               'DebertaV2ForQuestionAnswering')}),
    'distilbert': _family_of_classes(distilbert.DistilBertConfig, {
        'base': (distilbert.DistilBertModel, distilbert_table.BASE, 'DistilBertModel'),
        'classification': (distilbert.DistilBertForSequenceClassification,
                           distilbert_table.SEQUENCE_CLASSIFICATION,
                           'DistilBertForSequenceClassification'),
        'token_classification': (distilbert.DistilBertForTokenClassification,
                                 distilbert_table.TOKEN_CLASSIFICATION,
                                 'DistilBertForTokenClassification'),
        'multiple_choice': (distilbert.DistilBertForMultipleChoice,
                            distilbert_table.MULTIPLE_CHOICE, 'DistilBertForMultipleChoice'),
        'question_answering': (distilbert.DistilBertForQuestionAnswering,
                               distilbert_table.QUESTION_ANSWERING,
                               'DistilBertForQuestionAnswering')}),
    'modernbert': _family_of_classes(modernbert.ModernBertConfig, {
        'base': (modernbert.ModernBertModel, modernbert_table.BASE, 'ModernBertModel'),
        'classification': (modernbert.ModernBertForSequenceClassification,
                           modernbert_table.SEQUENCE_CLASSIFICATION,
                           'ModernBertForSequenceClassification'),
        'token_classification': (modernbert.ModernBertForTokenClassification,
                                 modernbert_table.TOKEN_CLASSIFICATION,
                                 'ModernBertForTokenClassification'),
        'multiple_choice': (modernbert.ModernBertForMultipleChoice,
                            modernbert_table.MULTIPLE_CHOICE, 'ModernBertForMultipleChoice'),
        'question_answering': (modernbert.ModernBertForQuestionAnswering,
                               modernbert_table.QUESTION_ANSWERING,
                               'ModernBertForQuestionAnswering')}),
    'roberta': _roberta_family(bert.RobertaConfig, 'Roberta'),
    'xlm-roberta': _roberta_family(bert.XLMRobertaConfig, 'XLMRoberta'),
    'gpt2': _family_of_classes(gpt2.GPT2Config, {
        'causal_lm': (gpt2.GPT2LMHeadModel, gpt2_table.lm_head_table, 'GPT2LMHeadModel'),
        'classification': (gpt2.GPT2ForSequenceClassification,
                           gpt2_table.SEQUENCE_CLASSIFICATION, 'GPT2ForSequenceClassification'),
        'token_classification': (gpt2.GPT2ForTokenClassification, gpt2_table.TOKEN_CLASSIFICATION,
                                 'GPT2ForTokenClassification')}),
    'gemma2': _gemma_family('Gemma2', 'Gemma2ForSequenceClassification',
                            'Gemma2ForTokenClassification'),
    'gemma3_text': _gemma_family('Gemma3', 'Gemma3TextForSequenceClassification', None),
    'llama': _llama_family('Llama'),
    'mistral': _llama_family('Mistral'),
    'mixtral': _llama_family('Mixtral'),
    'phi3': _llama_family('Phi3'),
    'qwen2': _llama_family('Qwen2'),
    'qwen3': _llama_family('Qwen3'),
    'qwen3_moe': _llama_family('Qwen3Moe'),
}

SUPPORTED_MODEL_TYPES = tuple(sorted(_FAMILIES))


def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
  """Reads `config.json` from a checkpoint directory."""
  file = pathlib.Path(path) / CONFIG_FILE
  if not file.is_file():
    raise UserError(f'no {CONFIG_FILE} in checkpoint directory {path} '
                    f'(looked for {file})')
  try:
    config = json.loads(file.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f'invalid JSON in {file}: {e}') from e
  if not isinstance(config, dict):
    raise UserError(f'{file} is not a JSON object')
  return config


def _family(model_type, where: str) -> Family:
  if model_type not in _FAMILIES:
    raise UserError(f"unsupported model_type '{model_type}' in {where}; "
                    f'supported: {", ".join(SUPPORTED_MODEL_TYPES)}')
  return _FAMILIES[model_type]


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise UserError(f"unknown task '{task}'; supported: {', '.join(TASKS)}")


def _table(table, config) -> safetensors_io.WeightTable:
  """A family's table, or the one its config selects (e.g. tied heads)."""
  return table if isinstance(table, safetensors_io.WeightTable) else table(
      config)


def _family_task(family: Family, model_type: str, task: str) -> None:
  if task not in family.classes:
    raise UserError(
        f"task '{task}' is not supported for model_type '{model_type}'; "
        f'supported: {", ".join(family.classes)}')


def _config_num_labels(hf: dict[str, Any]) -> int | None:
  if isinstance(hf.get('id2label'), dict):
    return len(hf['id2label'])
  return hf.get('num_labels')


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What a checkpoint directory says to build, known before any weight is read.

  Attributes:
    config: the family's config object (from `config.json`).
    task: the model task built.
    table: the class's weight table (HF name <-> NNX path).
    source: the checkpoint directory, for error messages.
    build: rngs -> the model with freshly initialised params (run it under `nnx.eval_shape`
      for an abstract model, or inside `jax.jit` to make only what the checkpoint lacks).
  """
  config: Any
  task: str
  table: safetensors_io.WeightTable
  source: str
  build: Callable[[nnx.Rngs], nnx.Module]


def model_spec(path: str | os.PathLike, *, task: str = 'classification',
               num_labels: int | None = None, dtype=jnp.float32, param_dtype=jnp.float32,
               remat: str = 'none', attention: str = 'xla', num_layers: int = 0,
               moe: moe_lib.MoeOptions | None = None) -> ModelSpec:
  """Reads a checkpoint directory's `config.json` into a `ModelSpec`; arguments as for
  `build_model`, `num_layers` > 0 keeps only the checkpoint's first that many layers (a
  smaller student: the later layers' tensors are not read), and `moe` routes a mixture of
  experts (None: dropless, the checkpoint's aux-loss weight; a model without experts refuses
  other options). Reads no weights."""
  _check_task(task)
  path = pathlib.Path(path)
  hf = read_hf_config(path)
  drop = _keep_layers(hf, num_layers, str(path / CONFIG_FILE))
  spec = _spec(hf, task=task, num_labels=num_labels, dtype=dtype, param_dtype=param_dtype,
               remat=remat, attention=attention, source=str(path),
               config_source=str(path / CONFIG_FILE), moe=moe)
  if drop:
    spec = dataclasses.replace(spec, table=dataclasses.replace(
        spec.table, ignore=(*spec.table.ignore, drop)))
  return spec


_LAYER_COUNT_KEYS = ('num_hidden_layers', 'n_layer')  # config.json's layer count (GPT-2: n_layer)


def _keep_layers(hf: dict[str, Any], num_layers: int, config_source: str) -> str:
  """Sets `hf`'s layer count to `num_layers` (0: unchanged); returns the regex of the HF tensor
  names of the layers dropped ('' when none), for the weight table to ignore."""
  if not num_layers:
    return ''
  key = next((k for k in _LAYER_COUNT_KEYS if k in hf), None)
  if key is None:
    raise UserError(f"model.num_layers is set but {config_source} names no layer count "
                    f"({' or '.join(_LAYER_COUNT_KEYS)})")
  total = int(hf[key])
  if not 0 < num_layers <= total:
    raise UserError(f"model.num_layers must be in [1, {total}] ({config_source} has {total} "
                    f"layers), got {num_layers}")
  hf[key] = num_layers
  dropped = '|'.join(str(i) for i in range(num_layers, total))
  return rf'(.*\.)?(layer|layers|h)\.({dropped})\..*' if dropped else ''


def _moe_options(config, moe: moe_lib.MoeOptions | None, config_source: str) -> dict[str, Any]:
  """The `moe` constructor argument for a config with experts; {} for one without, which
  refuses options other than the defaults."""
  if getattr(config, 'num_experts', 0):
    return {'moe': moe or moe_lib.MoeOptions()}
  if moe is not None and moe != moe_lib.MoeOptions():
    raise UserError(f"config key 'model.moe' routes experts, but {config_source} describes a "
                    f"'{config.model_type}' model without experts; leave model.moe at its "
                    'defaults')
  return {}


def _spec(hf: dict[str, Any], *, task, num_labels, dtype, param_dtype, remat, attention,
          source, config_source, moe=None) -> ModelSpec:
  model_type = hf.get('model_type')
  family = _family(model_type, config_source)
  _family_task(family, model_type, task)
  config = family.config_cls.from_hf(hf)
  if task in LABELLED_TASKS and num_labels is None:
    num_labels = _config_num_labels(hf) or 2
  _, table, _ = family.classes[task]
  options = _moe_options(config, moe, config_source)

  def build(rngs: nnx.Rngs) -> nnx.Module:
    return family.build(config, task, num_labels, dtype, param_dtype, rngs, remat=remat,
                        attention=attention, **options)
  return ModelSpec(config, task, _table(table, config), source, build)


def init_model(spec: ModelSpec, rngs: nnx.Rngs) -> nnx.Module:
  """`spec`'s model with random params, initialised under `jax.jit` as the sharded build
  (`ftjax.train.construct`) initialises them, so both give the same values (XLA's fused
  initialisers round differently from op-by-op ones, by ~1e-9); `rngs` advances as an eager
  build would advance it."""
  return nnx.jit(spec.build)(rngs)


def build_model(path: str | os.PathLike, *, task: str = 'classification',
                num_labels: int | None = None, dtype=jnp.float32,
                param_dtype=jnp.float32, rngs: nnx.Rngs, remat: str = 'none',
                attention: str = 'xla',
                moe: moe_lib.MoeOptions | None = None) -> tuple[nnx.Module, list[str]]:
  """Builds a model from an HF checkpoint directory and loads its weights, eagerly and whole.

  Training builds its model sharded instead (`ftjax.train.construct`); this serves tools and
  tests that want one model in memory.

  Args:
    path: directory with `config.json` and `model.safetensors` (or shards).
    task: 'base', 'classification' or 'causal_lm' (what the family has).
    num_labels: classifier width; None takes it from config.json (else 2).
    dtype: compute dtype (e.g. jnp.bfloat16).
    param_dtype: storage dtype of params; checkpoint values are cast to it.
    rngs: initialises params the checkpoint lacks (e.g. a new classifier).
    remat: per-layer rematerialisation policy (`layer_stack.REMAT_POLICIES`, config
      `model.remat`), kept by the module that runs the layers.
    attention: attention implementation of the decoder layers (`attention.IMPLEMENTATIONS`,
      config `model.attention`); a family without decoder attention refuses all but 'xla'.
    moe: a mixture of experts' routing options (config `model.moe`); None = the defaults.

  Returns:
    (model, NNX paths of params that were newly initialised).
  """
  # The config is checked before (possibly large) weights are read.
  spec = model_spec(path, task=task, num_labels=num_labels, dtype=dtype,
                    param_dtype=param_dtype, remat=remat, attention=attention, moe=moe)
  model = init_model(spec, rngs)
  tensors = safetensors_io.read_safetensors_dir(path)
  return model, safetensors_io.load_params(model, tensors, spec.table, source=spec.source)


def build_from_tensors(
    hf_config: dict[str, Any], tensors: dict[str, Any], *, task: str,
    num_labels: int | None = None, dtype=jnp.float32, param_dtype=jnp.float32,
    rngs: nnx.Rngs, source: str = 'tensors', config_source: str = 'config',
    remat: str = 'none', attention: str = 'xla',
    moe: moe_lib.MoeOptions | None = None) -> tuple[nnx.Module, list[str]]:
  """Builds a model from an HF config dict and HF-named tensors (no disk).

  Args:
    hf_config: the `config.json` dict (`model_type` selects the family).
    tensors: HF tensor name -> numpy array.
    task: 'base', 'classification' or 'causal_lm' (what the family has).
    num_labels, dtype, param_dtype, rngs, remat, attention, moe: as for `build_model`.
    source: names the tensors' origin in error messages (a file or dir).
    config_source: names the config's origin in error messages.

  Returns:
    (model, NNX paths of params that were newly initialised).
  """
  _check_task(task)
  spec = _spec(hf_config, task=task, num_labels=num_labels, dtype=dtype,
               param_dtype=param_dtype, remat=remat, attention=attention, source=source,
               config_source=config_source, moe=moe)
  model = init_model(spec, rngs)
  return model, safetensors_io.load_params(model, tensors, spec.table, source=source)


def _lookup(cls: type, model_type) -> tuple[Family, str] | None:
  """(family, task) whose class is `cls`, trying the family of `model_type`
  first (several families share `LlamaForCausalLM`)."""
  preferred = [_FAMILIES[model_type]] if model_type in _FAMILIES else []
  for family in preferred + list(_FAMILIES.values()):
    for task, (family_cls, _, _) in family.classes.items():
      if cls is family_cls:
        return family, task
  return None


def _model_type(model: nnx.Module):
  return getattr(getattr(model, 'config', None), 'model_type', None)


def _family_of(model: nnx.Module) -> tuple[Family, str]:
  """(family, task) of a plain registered model (what `save_hf` writes)."""
  hit = _lookup(type(model), _model_type(model))
  if hit is None:
    raise UserError(f'cannot save model of type {type(model).__name__}: '
                    'not a registered model class')
  return hit


def family_and_task(model: nnx.Module) -> tuple[Family, str]:
  """(family, task) of a registered model, or of the model class that a
  prompt-learning decoder wrapper adopted (its `wrapped_class`)."""
  cls = getattr(model, 'wrapped_class', None) or type(model)
  hit = _lookup(cls, _model_type(model))
  if hit is None:
    raise UserError(f'{cls.__name__} is not a registered model class')
  return hit


def weight_table(model: nnx.Module) -> safetensors_io.WeightTable:
  """The weight table (HF name <-> NNX path) of `model`'s class, as
  `family_and_task` finds it; tables chosen by the config (tied heads)
  are resolved with the model's config."""
  family, task = family_and_task(model)
  return _table(family.classes[task][1], model.config)


def save_hf(model: nnx.Module, out_dir: str | os.PathLike, *,
            task: str | None = None,
            id2label: dict[int, str] | None = None,
            problem_type: str | None = None) -> pathlib.Path:
  """Writes `config.json` and `model.safetensors` that transformers loads.

  Args:
    model: a registered model class (e.g. `BertForSequenceClassification`).
    out_dir: output directory (created).
    task: 'base', 'classification' or 'causal_lm'; must agree with the model
      class when given (None infers it).
    id2label: label names for a classifier; default LABEL_0, LABEL_1, ...
    problem_type: a sequence classifier's transformers `problem_type`
      (`multi_label_classification`, `regression`; None: transformers infers it).

  Returns:
    The output directory.
  """
  family, model_task = _family_of(model)
  if task is not None:
    _check_task(task)
    if task != model_task:
      raise UserError(f"cannot save a {type(model).__name__} as task '{task}'")
  _, table, architecture = family.classes[model_task]
  hf = model.config.to_hf()
  if 'rope_type' in hf.get('rope_parameters', {}):  # also the legacy keys, for readers older
    hf.update(rope_lib.legacy_keys(hf['rope_parameters']))  # than transformers 5 (per-layer-type
    # RoPE, Gemma 3's, writes its own)
  hf['architectures'] = [architecture]
  tensors = safetensors_io.export_params(model, _table(table, model.config))
  hf['dtype'] = str(next(iter(tensors.values())).dtype)
  if model_task in LABELLED_TASKS:
    n = model.num_labels
    id2label = id2label or {i: f'LABEL_{i}' for i in range(n)}
    if len(id2label) != n:
      raise UserError(f'id2label has {len(id2label)} labels, model has {n}')
    hf['num_labels'] = n
    hf['id2label'] = {str(i): name for i, name in id2label.items()}
    hf['label2id'] = {name: int(i) for i, name in id2label.items()}
  if problem_type is not None:
    hf['problem_type'] = problem_type
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  safetensors_io.write_safetensors(tensors, out / safetensors_io.SINGLE_FILE)
  tmp = out / f'.{CONFIG_FILE}.tmp-{os.getpid()}'
  tmp.write_text(json.dumps(hf, indent=2, sort_keys=True) + '\n')
  os.replace(tmp, out / CONFIG_FILE)
  return out
