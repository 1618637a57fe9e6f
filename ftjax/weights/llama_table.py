"""Weight tables between HF Llama-family checkpoints and `ftjax.models.llama`.

HF names follow `transformers.LlamaForCausalLM` (also Mistral, Qwen2, Qwen3,
SmolLM2, Phi-3 with its fused `qkv_proj` / `gate_up_proj`, and the mixtures of experts Mixtral
and Qwen3-MoE with one tensor per expert and Linear), and `LlamaForSequenceClassification` for the classifier (its `score` in place of
the LM head; a causal-LM checkpoint loads into it with `score` new). With tied embeddings `lm_head.weight` is not a parameter: a
checkpoint that still stores it (some do) has it ignored, and export omits it,
as transformers does.
"""

from ftjax.models import llama
from ftjax.weights.safetensors_io import Rule
from ftjax.weights.safetensors_io import WeightTable


def linear_rules(name: str) -> list[Rule]:
  """An `nnx.Linear` at `name`: HF's [out, in] weight transposed, and its bias."""
  return [Rule(f'{name}.weight', f'{name}.kernel', 'T'),
          Rule(f'{name}.bias', f'{name}.bias')]


def _rules(tied: bool, fused: bool = False) -> list[Rule]:
  layer = 'model.layers.{i}'
  rules = [Rule('model.embed_tokens.weight', 'model.embed_tokens.embedding'),
           Rule('model.norm.weight', 'model.norm.scale')]
  projections = ('qkv_proj', 'o_proj') if fused else ('q_proj', 'k_proj', 'v_proj', 'o_proj')
  for proj in projections:
    rules += linear_rules(f'{layer}.self_attn.{proj}')
  for norm in ('q_norm', 'k_norm'):
    rules.append(Rule(f'{layer}.self_attn.{norm}.weight',
                      f'{layer}.self_attn.{norm}.scale'))
  for proj in ('gate_up_proj', 'down_proj') if fused else ('gate_proj', 'up_proj', 'down_proj'):
    rules += linear_rules(f'{layer}.mlp.{proj}')
  for norm in ('input_layernorm', 'post_attention_layernorm'):
    rules.append(Rule(f'{layer}.{norm}.weight', f'{layer}.{norm}.scale'))
  rules += _experts_rules(layer)
  if not tied:
    rules.append(Rule('lm_head.weight', 'lm_head.kernel', 'T'))
  return rules


def _experts_rules(layer: str) -> list[Rule]:
  """Mixtral's `block_sparse_moe` and Qwen3-MoE's sparse `mlp`: the router `gate` and each
  expert's Linears, stacked along the first axis of one [experts, in, out] param per name
  (`models/moe.Experts`). A dense model has none of these params, so they match nothing there."""
  rules = []
  for block, names in llama.MOE_NAMES.values():
    rules.append(Rule(f'{layer}.{block}.gate.weight', f'{layer}.{block}.gate.kernel', 'T'))
    rules += [Rule(f'{layer}.{block}.experts.{{e}}.{name}.weight',
                   f'{layer}.{block}.experts.{name}', 'T') for name in names]
  return rules


# Non-persistent RoPE buffers that old checkpoints saved.
_BUFFERS = (r'model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq',)


def _causal_lm(tied: bool, fused: bool) -> WeightTable:
  if tied:
    return WeightTable(rules=tuple(_rules(True, fused)), ignore=_BUFFERS + (r'lm_head\.weight',),
                       optional=(r'score\..*',))
  return WeightTable(rules=tuple(_rules(False, fused)), ignore=_BUFFERS)


def _sequence_classification(fused: bool) -> WeightTable:
  """The decoder and `score`; a causal LM's `lm_head` is not read."""
  return WeightTable(
      rules=tuple(_rules(True, fused)) + (Rule('score.weight', 'score.kernel', 'T'),),
      ignore=_BUFFERS + (r'lm_head\.weight',), optional=(r'score\..*',))


def _token_classification(fused: bool) -> WeightTable:
  """The decoder and a `score` with a bias on every position (`GenericForTokenClassification`)."""
  return WeightTable(
      rules=tuple(_rules(True, fused)) + tuple(linear_rules('score')),
      ignore=_BUFFERS + (r'lm_head\.weight',), optional=(r'score\..*',))


CAUSAL_LM = _causal_lm(tied=False, fused=False)
CAUSAL_LM_TIED = _causal_lm(tied=True, fused=False)
SEQUENCE_CLASSIFICATION = _sequence_classification(fused=False)
_FUSED = {True: _causal_lm(True, True), False: _causal_lm(False, True)}
_FUSED_CLASSIFICATION = _sequence_classification(fused=True)
_TOKEN_CLASSIFICATION = {fused: _token_classification(fused) for fused in (False, True)}


def causal_lm_table(config) -> WeightTable:
  """The table for a `LlamaForCausalLM` with this config (tied head, Phi-3's fused layout)."""
  if config.fused_projections:
    return _FUSED[config.tie_word_embeddings]
  return CAUSAL_LM_TIED if config.tie_word_embeddings else CAUSAL_LM


def sequence_classification_table(config) -> WeightTable:
  """The table for a `LlamaForSequenceClassification` with this config."""
  return _FUSED_CLASSIFICATION if config.fused_projections else SEQUENCE_CLASSIFICATION


def token_classification_table(config) -> WeightTable:
  """The table for a `LlamaForTokenClassification` with this config."""
  return _TOKEN_CLASSIFICATION[config.fused_projections]
