"""Weight tables between HF Gemma 2 / Gemma 3 (text) checkpoints and `ftjax.models.gemma`.

HF names follow `transformers.Gemma2ForCausalLM` / `Gemma3ForCausalLM` (and their
`*ForSequenceClassification`, with `score`). Norm weights are stored as HF stores them (around
0; the model scales by 1 + weight). Tied heads work as in `llama_table`.
"""

from ftjax.weights import llama_table
from ftjax.weights.safetensors_io import Rule
from ftjax.weights.safetensors_io import WeightTable

_NORMS = ('input_layernorm', 'post_attention_layernorm', 'pre_feedforward_layernorm',
          'post_feedforward_layernorm')


def _rules(tied: bool) -> list[Rule]:
  layer = 'model.layers.{i}'
  rules = [Rule('model.embed_tokens.weight', 'model.embed_tokens.embedding'),
           Rule('model.norm.weight', 'model.norm.scale')]
  for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
    rules += llama_table.linear_rules(f'{layer}.self_attn.{proj}')
  for norm in ('q_norm', 'k_norm'):
    rules.append(Rule(f'{layer}.self_attn.{norm}.weight', f'{layer}.self_attn.{norm}.scale'))
  for proj in ('gate_proj', 'up_proj', 'down_proj'):
    rules += llama_table.linear_rules(f'{layer}.mlp.{proj}')
  for norm in _NORMS:
    rules.append(Rule(f'{layer}.{norm}.weight', f'{layer}.{norm}.scale'))
  if not tied:
    rules.append(Rule('lm_head.weight', 'lm_head.kernel', 'T'))
  return rules


CAUSAL_LM = WeightTable(rules=tuple(_rules(tied=False)))
CAUSAL_LM_TIED = WeightTable(rules=tuple(_rules(tied=True)), ignore=(r'lm_head\.weight',),
                             optional=(r'score\..*',))


def causal_lm_table(config) -> WeightTable:
  """The table for a `GemmaForCausalLM` with this config."""
  return CAUSAL_LM_TIED if config.tie_word_embeddings else CAUSAL_LM


SEQUENCE_CLASSIFICATION = WeightTable(
    rules=tuple(_rules(tied=True)) + (Rule('score.weight', 'score.kernel', 'T'),),
    ignore=(r'lm_head\.weight',), optional=(r'score\..*',))


# `Gemma2ForTokenClassification`: the decoder and `score` with a bias on every position.
TOKEN_CLASSIFICATION = WeightTable(
    rules=tuple(_rules(tied=True)) + (Rule('score.weight', 'score.kernel', 'T'),
                                      Rule('score.bias', 'score.bias')),
    ignore=(r'lm_head\.weight',), optional=(r'score\..*',))
