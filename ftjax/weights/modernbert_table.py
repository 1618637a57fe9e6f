"""Weight tables between HF ModernBERT checkpoints and `ftjax.models.modernbert`.

HF names follow `transformers.ModernBertModel` and its task classes (the encoder under
`model.`, then `head.{dense,norm}` and `classifier`). Biases exist only where the config asks
for them (`attention_bias`, `mlp_bias`, `norm_bias`, `classifier_bias`), so every bias rule is
there and a model without that bias simply has no param for it. A masked-LM checkpoint's
`decoder` is not read; its `head` loads into a task class's `head`, as in transformers.
"""

from ftjax.weights.safetensors_io import Rule
from ftjax.weights.safetensors_io import WeightTable


def _linear(name: str) -> list[Rule]:
  return [Rule(f'{name}.weight', f'{name}.kernel', 'T'), Rule(f'{name}.bias', f'{name}.bias')]


def _layernorm(name: str) -> list[Rule]:
  return [Rule(f'{name}.weight', f'{name}.scale'), Rule(f'{name}.bias', f'{name}.bias')]


def _base_rules(prefix: str = '') -> list[Rule]:
  layer = f'{prefix}layers.{{i}}'
  rules = [Rule(f'{prefix}embeddings.tok_embeddings.weight',
                f'{prefix}embeddings.tok_embeddings.embedding'),
           *_layernorm(f'{prefix}embeddings.norm')]
  rules += _layernorm(f'{layer}.attn_norm') + _linear(f'{layer}.attn.Wqkv')
  rules += _linear(f'{layer}.attn.Wo') + _layernorm(f'{layer}.mlp_norm')
  rules += _linear(f'{layer}.mlp.Wi') + _linear(f'{layer}.mlp.Wo')
  return rules + _layernorm(f'{prefix}final_norm')


def _head_rules() -> list[Rule]:
  return _linear('head.dense') + _layernorm('head.norm') + _linear('classifier')


_IGNORED = (r'decoder\..*',)  # the masked-LM output layer
_HEAD = r'(head|classifier)\..*'

BASE = WeightTable(rules=tuple(_base_rules()), ignore=_IGNORED + (_HEAD,),
                   prefix_aliases=(('model.', ''),))

# Every task class: the encoder under `model.`, `head`, `classifier` (num_labels, 1 or 2 wide),
# both new on an encoder-only checkpoint.
TASK = WeightTable(rules=tuple(_base_rules('model.') + _head_rules()), ignore=_IGNORED,
                   optional=(_HEAD,), prefix_aliases=(('', 'model.'),))

SEQUENCE_CLASSIFICATION = TOKEN_CLASSIFICATION = MULTIPLE_CHOICE = QUESTION_ANSWERING = TASK
