"""Weight tables between HF GPT-2 checkpoints and `ftjax.models.gpt2`.

HF `Conv1D` weights are [in, out] like NNX kernels: no transpose (only a
separate `lm_head` and a classifier's `score` are `nn.Linear`s). Checkpoints of the bare `GPT2Model`
(the original `gpt2` hub files) lack the `transformer.` prefix; both load.
"""

from ftjax.weights.safetensors_io import Rule
from ftjax.weights.safetensors_io import WeightTable


def _same(name: str, *leaves: tuple[str, str]) -> list[Rule]:
  return [Rule(f'{name}.{hf}', f'{name}.{nnx}') for hf, nnx in leaves]


def _rules(tied: bool) -> list[Rule]:
  norm = (('weight', 'scale'), ('bias', 'bias'))
  dense = (('weight', 'kernel'), ('bias', 'bias'))
  block = 'transformer.h.{i}'
  rules = [Rule('transformer.wte.weight', 'transformer.wte.embedding'),
           Rule('transformer.wpe.weight', 'transformer.wpe.embedding'),
           *_same('transformer.ln_f', *norm)]
  for ln in ('ln_1', 'ln_2'):
    rules += _same(f'{block}.{ln}', *norm)
  for dense_name in ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'):
    rules += _same(f'{block}.{dense_name}', *dense)
  if not tied:
    rules.append(Rule('lm_head.weight', 'lm_head.kernel', 'T'))
  return rules


# Causal-mask buffers that older checkpoints saved.
_BUFFERS = (r'(transformer\.)?h\.\d+\.attn\.(bias|masked_bias)',)
_ALIASES = (('', 'transformer.'),)

LM_HEAD = WeightTable(rules=tuple(_rules(tied=False)), ignore=_BUFFERS,
                      prefix_aliases=_ALIASES)
LM_HEAD_TIED = WeightTable(rules=tuple(_rules(tied=True)),
                           ignore=_BUFFERS + (r'lm_head\.weight',),
                           prefix_aliases=_ALIASES)


def lm_head_table(config) -> WeightTable:
  """The table for a `GPT2LMHeadModel` with this config."""
  return LM_HEAD_TIED if config.tie_word_embeddings else LM_HEAD


# `GPT2ForSequenceClassification`: the transformer and `score`; an LM head is not read.
SEQUENCE_CLASSIFICATION = WeightTable(
    rules=tuple(_rules(tied=True)) + (Rule('score.weight', 'score.kernel', 'T'),),
    ignore=_BUFFERS + (r'lm_head\.weight',), prefix_aliases=_ALIASES,
    optional=(r'score\..*',))


# `GPT2ForTokenClassification`: the transformer and `classifier` (with a bias) on every position.
TOKEN_CLASSIFICATION = WeightTable(
    rules=tuple(_rules(tied=True)) + (Rule('classifier.weight', 'classifier.kernel', 'T'),
                                      Rule('classifier.bias', 'classifier.bias')),
    ignore=_BUFFERS + (r'lm_head\.weight',), prefix_aliases=_ALIASES,
    optional=(r'classifier\..*',))
