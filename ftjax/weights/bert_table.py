"""Weight tables between HF BERT checkpoints and `ftjax.models.bert`.

HF names follow `transformers.BertModel` / `BertForSequenceClassification`, and
`RobertaModel` / `RobertaForSequenceClassification` (also XLM-RoBERTa) under `roberta.`.
Old TF-converted checkpoints name LayerNorm params `gamma`/`beta`; both are read.
"""

from ftjax.weights.safetensors_io import Rule
from ftjax.weights.safetensors_io import WeightTable


def _layernorm(hf: str, nnx: str) -> list[Rule]:
  return [Rule(f'{hf}.weight', f'{nnx}.scale'),
          Rule(f'{hf}.bias', f'{nnx}.bias'),
          Rule(f'{hf}.gamma', f'{nnx}.scale'),
          Rule(f'{hf}.beta', f'{nnx}.bias')]


def _linear(hf: str, nnx: str) -> list[Rule]:
  return [Rule(f'{hf}.weight', f'{nnx}.kernel', 'T'),
          Rule(f'{hf}.bias', f'{nnx}.bias')]


def _base_rules(hf: str = '', nnx: str = '') -> list[Rule]:
  """Rules for `BertModel` with the given name prefixes on each side."""
  layer_hf, layer_nnx = f'{hf}encoder.layer.{{i}}', f'{nnx}encoder.layer.{{i}}'
  rules = [
      Rule(f'{hf}embeddings.word_embeddings.weight',
           f'{nnx}embeddings.word_embeddings.embedding'),
      Rule(f'{hf}embeddings.position_embeddings.weight',
           f'{nnx}embeddings.position_embeddings.embedding'),
      Rule(f'{hf}embeddings.token_type_embeddings.weight',
           f'{nnx}embeddings.token_type_embeddings.embedding'),
      *_layernorm(f'{hf}embeddings.LayerNorm', f'{nnx}embeddings.LayerNorm'),
  ]
  for proj in ('query', 'key', 'value'):
    rules += _linear(f'{layer_hf}.attention.self.{proj}',
                     f'{layer_nnx}.attention.self_attn.{proj}')
  rules += _linear(f'{layer_hf}.attention.output.dense',
                   f'{layer_nnx}.attention.output.dense')
  rules += _layernorm(f'{layer_hf}.attention.output.LayerNorm',
                      f'{layer_nnx}.attention.output.LayerNorm')
  rules += _linear(f'{layer_hf}.intermediate.dense',
                   f'{layer_nnx}.intermediate.dense')
  rules += _linear(f'{layer_hf}.output.dense', f'{layer_nnx}.output.dense')
  rules += _layernorm(f'{layer_hf}.output.LayerNorm',
                      f'{layer_nnx}.output.LayerNorm')
  rules += _linear(f'{hf}pooler.dense', f'{nnx}pooler.dense')
  return rules


# Buffers in HF checkpoints, not parameters.
_BUFFERS = (r'(bert\.)?embeddings\.position_ids',)

# `BertModel`. Reads task checkpoints too (`bert.` prefix), dropping their
# heads like transformers does. A checkpoint saved without a pooler leaves the
# pooler freshly initialised (reported, as transformers warns).
BASE = WeightTable(
    rules=tuple(_base_rules()),
    ignore=_BUFFERS + (r'classifier\.(weight|bias)', r'cls\..*'),
    optional=(r'pooler\..*',),
    prefix_aliases=(('bert.', ''),),
)

# `BertForSequenceClassification`. Reads base checkpoints (no `bert.` prefix);
# then the classifier (and a missing pooler) is newly initialised.
SEQUENCE_CLASSIFICATION = WeightTable(
    rules=tuple(_base_rules('bert.', 'bert.')
                + _linear('classifier', 'classifier')),
    ignore=_BUFFERS + (r'cls\..*',),
    optional=(r'bert\.pooler\..*', r'classifier\..*'),
    prefix_aliases=(('', 'bert.'),),
)


_ROBERTA_BUFFERS = (r'(roberta\.)?embeddings\.(position_ids|token_type_ids)',)

# `RobertaModel` (the base with its pooler, `task='base'`); reads classifier checkpoints too.
ROBERTA_BASE = WeightTable(
    rules=tuple(_base_rules()),
    ignore=_ROBERTA_BUFFERS + (r'classifier\..*', r'lm_head\..*'),
    optional=(r'pooler\..*',),
    prefix_aliases=(('roberta.', ''),),
)

# `RobertaForSequenceClassification`: no pooler; the two-layer head is new on a base checkpoint
# (a masked-LM checkpoint's `lm_head` and a base's pooler are not read).
ROBERTA_SEQUENCE_CLASSIFICATION = WeightTable(
    rules=tuple(r for r in _base_rules('roberta.', 'roberta.') if 'pooler' not in r.hf)
    + tuple(_linear('classifier.dense', 'classifier.dense')
            + _linear('classifier.out_proj', 'classifier.out_proj')),
    ignore=_ROBERTA_BUFFERS + (r'lm_head\..*', r'(roberta\.)?pooler\..*'),
    optional=(r'classifier\..*',),
    prefix_aliases=(('', 'roberta.'),),
)


def _per_token_head(prefix: str, ignore: tuple[str, ...], head: str) -> WeightTable:
  """A head on every token (`{Bert,Roberta}ForTokenClassification`'s `classifier`,
  `...ForQuestionAnswering`'s `qa_outputs`): the encoder under `prefix` without its pooler, and
  the head, new on a base checkpoint (whose pooler is not read)."""
  return WeightTable(
      rules=tuple(r for r in _base_rules(prefix, prefix) if 'pooler' not in r.hf)
      + tuple(_linear(head, head)),
      ignore=ignore + (rf'({prefix[:-1]}\.)?pooler\..*',),
      optional=(rf'{head}\..*',),
      prefix_aliases=(('', prefix),))


TOKEN_CLASSIFICATION = _per_token_head('bert.', _BUFFERS + (r'cls\..*',), 'classifier')
ROBERTA_TOKEN_CLASSIFICATION = _per_token_head(
    'roberta.', _ROBERTA_BUFFERS + (r'lm_head\..*',), 'classifier')
QUESTION_ANSWERING = _per_token_head('bert.', _BUFFERS + (r'cls\..*', r'classifier\..*'),
                                     'qa_outputs')
ROBERTA_QUESTION_ANSWERING = _per_token_head(
    'roberta.', _ROBERTA_BUFFERS + (r'lm_head\..*', r'classifier\..*'), 'qa_outputs')

# `BertForMultipleChoice`: the sequence classifier's names (one output).
MULTIPLE_CHOICE = SEQUENCE_CLASSIFICATION

# `RobertaForMultipleChoice`: RoBERTa with its pooler, and a one-output `classifier`.
ROBERTA_MULTIPLE_CHOICE = WeightTable(
    rules=tuple(_base_rules('roberta.', 'roberta.') + _linear('classifier', 'classifier')),
    ignore=_ROBERTA_BUFFERS + (r'lm_head\..*',),
    optional=(r'roberta\.pooler\..*', r'classifier\..*'),
    prefix_aliases=(('', 'roberta.'),))
