"""Weight tables between HF DistilBERT checkpoints and `ftjax.models.distilbert`.

HF names follow `transformers.DistilBertModel` / `DistilBertForSequenceClassification` (its
modules under `distilbert.`); a masked-LM checkpoint's `vocab_*` head is not read.
"""

from ftjax.weights.safetensors_io import Rule
from ftjax.weights.safetensors_io import WeightTable


def _linear(name: str) -> list[Rule]:
  return [Rule(f'{name}.weight', f'{name}.kernel', 'T'), Rule(f'{name}.bias', f'{name}.bias')]


def _layernorm(name: str) -> list[Rule]:
  return [Rule(f'{name}.weight', f'{name}.scale'), Rule(f'{name}.bias', f'{name}.bias')]


def _base_rules(prefix: str = '') -> list[Rule]:
  layer = f'{prefix}transformer.layer.{{i}}'
  rules = [Rule(f'{prefix}embeddings.word_embeddings.weight',
                f'{prefix}embeddings.word_embeddings.embedding'),
           Rule(f'{prefix}embeddings.position_embeddings.weight',
                f'{prefix}embeddings.position_embeddings.embedding'),
           *_layernorm(f'{prefix}embeddings.LayerNorm')]
  for proj in ('q_lin', 'k_lin', 'v_lin', 'out_lin'):
    rules += _linear(f'{layer}.attention.{proj}')
  rules += _layernorm(f'{layer}.sa_layer_norm') + _linear(f'{layer}.ffn.lin1')
  rules += _linear(f'{layer}.ffn.lin2') + _layernorm(f'{layer}.output_layer_norm')
  return rules


_IGNORED = (r'(distilbert\.)?embeddings\.position_ids', r'vocab_(transform|layer_norm|projector)\..*')

BASE = WeightTable(rules=tuple(_base_rules()),
                   ignore=_IGNORED + (r'(pre_)?classifier\..*',),
                   prefix_aliases=(('distilbert.', ''),))

SEQUENCE_CLASSIFICATION = WeightTable(
    rules=tuple(_base_rules('distilbert.') + _linear('pre_classifier') + _linear('classifier')),
    ignore=_IGNORED, optional=(r'(pre_)?classifier\..*',),
    prefix_aliases=(('', 'distilbert.'),))

# `DistilBertForTokenClassification`: `classifier` on every token, new on a base checkpoint.
TOKEN_CLASSIFICATION = WeightTable(
    rules=tuple(_base_rules('distilbert.') + _linear('classifier')),
    ignore=_IGNORED + (r'pre_classifier\..*',), optional=(r'classifier\..*',),
    prefix_aliases=(('', 'distilbert.'),))

# `DistilBertForMultipleChoice`: the sequence classifier's names (one output).
MULTIPLE_CHOICE = SEQUENCE_CLASSIFICATION

# `DistilBertForQuestionAnswering`: `qa_outputs` (start, end) on every token.
QUESTION_ANSWERING = WeightTable(
    rules=tuple(_base_rules('distilbert.') + _linear('qa_outputs')),
    ignore=_IGNORED + (r'(pre_)?classifier\..*',), optional=(r'qa_outputs\..*',),
    prefix_aliases=(('', 'distilbert.'),))
