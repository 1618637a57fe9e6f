"""Weight tables between HF Llama-family checkpoints and `ftjax.models.llama`.

HF names follow `transformers.LlamaForCausalLM` (also Mistral, Qwen2, Qwen3,
SmolLM2), and `LlamaForSequenceClassification` for the classifier (its `score` in place of
the LM head; a causal-LM checkpoint loads into it with `score` new). With tied embeddings `lm_head.weight` is not a parameter: a
checkpoint that still stores it (some do) has it ignored, and export omits it,
as transformers does.
"""

from ftjax.weights.safetensors_io import Rule
from ftjax.weights.safetensors_io import WeightTable


def linear_rules(name: str) -> list[Rule]:
  """An `nnx.Linear` at `name`: HF's [out, in] weight transposed, and its bias."""
  return [Rule(f'{name}.weight', f'{name}.kernel', 'T'),
          Rule(f'{name}.bias', f'{name}.bias')]


def _rules(tied: bool) -> list[Rule]:
  layer = 'model.layers.{i}'
  rules = [Rule('model.embed_tokens.weight', 'model.embed_tokens.embedding'),
           Rule('model.norm.weight', 'model.norm.scale')]
  for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
    rules += linear_rules(f'{layer}.self_attn.{proj}')
  for norm in ('q_norm', 'k_norm'):
    rules.append(Rule(f'{layer}.self_attn.{norm}.weight',
                      f'{layer}.self_attn.{norm}.scale'))
  for proj in ('gate_proj', 'up_proj', 'down_proj'):
    rules += linear_rules(f'{layer}.mlp.{proj}')
  for norm in ('input_layernorm', 'post_attention_layernorm'):
    rules.append(Rule(f'{layer}.{norm}.weight', f'{layer}.{norm}.scale'))
  if not tied:
    rules.append(Rule('lm_head.weight', 'lm_head.kernel', 'T'))
  return rules


# Non-persistent RoPE buffers that old checkpoints saved.
_BUFFERS = (r'model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq',)

CAUSAL_LM = WeightTable(rules=tuple(_rules(tied=False)), ignore=_BUFFERS)
CAUSAL_LM_TIED = WeightTable(rules=tuple(_rules(tied=True)),
                             ignore=_BUFFERS + (r'lm_head\.weight',), optional=(r'score\..*',))


def causal_lm_table(config) -> WeightTable:
  """The table for a `LlamaForCausalLM` with this config."""
  return CAUSAL_LM_TIED if config.tie_word_embeddings else CAUSAL_LM


# A sequence classifier: the decoder and `score`; a causal LM's `lm_head` is not read.
SEQUENCE_CLASSIFICATION = WeightTable(
    rules=tuple(_rules(tied=True)) + (Rule('score.weight', 'score.kernel', 'T'),),
    ignore=_BUFFERS + (r'lm_head\.weight',), optional=(r'score\..*',))
