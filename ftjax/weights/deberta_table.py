"""Weight tables between HF DeBERTa-v2/v3 checkpoints and `ftjax.models.deberta`.

HF names follow `transformers.DebertaV2Model` and its task classes (the encoder under
`deberta.`). A config's optional modules (absolute positions, token types, `embed_proj`, the
relative table and its LayerNorm, the position projections, the ConvLayer) are all in the
rules: a tensor whose module the config lacks is unexpected, as in transformers, except
`position_embeddings` without `position_biased_input`, which v3 checkpoints carry and
transformers skips too. A masked-LM checkpoint's heads are not read. Tables are functions of the
config for that one case.
"""

from ftjax.weights.safetensors_io import Rule
from ftjax.weights.safetensors_io import WeightTable


def _linear(hf: str, nnx: str | None = None) -> list[Rule]:
  nnx = nnx or hf
  return [Rule(f'{hf}.weight', f'{nnx}.kernel', 'T'), Rule(f'{hf}.bias', f'{nnx}.bias')]


def _layernorm(name: str) -> list[Rule]:
  return [Rule(f'{name}.weight', f'{name}.scale'), Rule(f'{name}.bias', f'{name}.bias')]


def _embedding(name: str) -> Rule:
  return Rule(f'{name}.weight', f'{name}.embedding')


def _base_rules(prefix: str = '') -> list[Rule]:
  emb, enc = f'{prefix}embeddings', f'{prefix}encoder'
  rules = [_embedding(f'{emb}.{table}')
           for table in ('word_embeddings', 'position_embeddings', 'token_type_embeddings')]
  rules += [Rule(f'{emb}.embed_proj.weight', f'{emb}.embed_proj.kernel', 'T')]
  rules += _layernorm(f'{emb}.LayerNorm')
  layer = f'{enc}.layer.{{i}}'
  for proj in ('query_proj', 'key_proj', 'value_proj', 'pos_key_proj', 'pos_query_proj'):
    rules += _linear(f'{layer}.attention.self.{proj}', f'{layer}.attention.self_attn.{proj}')
  rules += _linear(f'{layer}.attention.output.dense')
  rules += _layernorm(f'{layer}.attention.output.LayerNorm')
  rules += _linear(f'{layer}.intermediate.dense')
  rules += _linear(f'{layer}.output.dense') + _layernorm(f'{layer}.output.LayerNorm')
  rules += [_embedding(f'{enc}.rel_embeddings')] + _layernorm(f'{enc}.LayerNorm')
  # The ConvLayer's kernel keeps PyTorch's [out, in / groups, width] layout (`deberta.Conv1d`).
  rules += [Rule(f'{enc}.conv.conv.weight', f'{enc}.conv.conv.kernel'),
            Rule(f'{enc}.conv.conv.bias', f'{enc}.conv.conv.bias')]
  rules += _layernorm(f'{enc}.conv.LayerNorm')
  return rules


# HF's task heads (the pooler is `context_pooler` here) and the masked-LM heads.
_POOLER = _linear('pooler.dense', 'context_pooler.dense')
_HEADS = {'pooler': r'pooler\..*', 'classifier': r'classifier\..*',
          'qa_outputs': r'qa_outputs\..*'}
_MLM = (r'lm_predictions\..*', r'cls\..*', r'mask_predictions\..*')


def _ignored(config, without: tuple[str, ...]) -> tuple[str, ...]:
  """Buffers, the masked-LM heads, the task heads this class lacks and, without
  `position_biased_input`, a checkpoint's absolute position table (as transformers does)."""
  out = (r'(deberta\.)?embeddings\.position_ids',) + _MLM
  out += tuple(pattern for name, pattern in _HEADS.items() if name in without)
  if not config.position_biased_input:
    out += (r'(deberta\.)?embeddings\.position_embeddings\.weight',)
  return out


def base_table(config) -> WeightTable:
  """`DebertaV2Model`; reads task checkpoints too (`deberta.` prefix), dropping their heads."""
  return WeightTable(rules=tuple(_base_rules()), ignore=_ignored(config, tuple(_HEADS)),
                     prefix_aliases=(('deberta.', ''),))


def _task_table(config, head: list[Rule], without: tuple[str, ...], optional: tuple[str, ...]):
  """The encoder under `deberta.` plus `head`, new on a base checkpoint (`optional`)."""
  return WeightTable(rules=tuple(_base_rules('deberta.') + head),
                     ignore=_ignored(config, without), optional=optional,
                     prefix_aliases=(('', 'deberta.'),))


def sequence_classification_table(config) -> WeightTable:
  """`DebertaV2ForSequenceClassification` (and `...ForMultipleChoice`, one output): the
  pooler and the classifier."""
  return _task_table(config, _POOLER + _linear('classifier'), ('qa_outputs',),
                     (r'context_pooler\..*', r'classifier\..*'))


def token_classification_table(config) -> WeightTable:
  """`DebertaV2ForTokenClassification`: `classifier` on every token."""
  return _task_table(config, _linear('classifier'), ('pooler', 'qa_outputs'),
                     (r'classifier\..*',))


def question_answering_table(config) -> WeightTable:
  """`DebertaV2ForQuestionAnswering`: `qa_outputs` (start, end) on every token."""
  return _task_table(config, _linear('qa_outputs'), ('pooler', 'classifier'),
                     (r'qa_outputs\..*',))


multiple_choice_table = sequence_classification_table
