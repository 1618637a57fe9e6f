"""Sentence embeddings (objective `embedding`): contrastive fine-tuning of a bare encoder.

The model is the encoder without a head (`model.task = "base"`: BERT, RoBERTa, XLM-RoBERTa,
DistilBERT); a text's embedding is its last hidden states pooled (`objective.embedding.pooling`:
mean, cls or max) and, with `normalize`, scaled to unit length: sentence-transformers'
`Transformer` -> `Pooling` -> `Normalize` (`ftjax.models.pooling`). Batches are (anchor,
positive) pairs ([B, 2, T], `ftjax.data.pairs`); both sides run in one forward pass.

The loss is MultipleNegativesRanking (sentence-transformers' `MultipleNegativesRankingLoss`,
InfoNCE with in-batch negatives): for anchor i, the candidates are every positive of the global
batch, scored by `scale` x cosine similarity, and the loss is the cross-entropy of picking its
own positive. Positives of the anchor's own relevance group (another snippet of the same movie)
are not negatives: they are left out of its candidates, as are padding rows. With `symmetric`
the positive-to-anchors direction is added and the two averaged
(`MultipleNegativesSymmetricRankingLoss`). The negatives are the rows of one (micro)batch:
`train.grad_accum_steps` shrinks them, so raise the batch before accumulating.

Evaluation embeds a whole split (`row_outputs` in the jitted step, then `metrics_from_rows`, as
`ftjax.train.steps.Evaluator` calls them) and reports retrieval over it (`ftjax.retrieval`: each
anchor a query, the split's positives the corpus, relevant = the query's group): recall@k, hit@k, mrr@K, ndcg@K; `loss` is the same
contrastive loss with the whole split's positives as candidates (so it does not depend on the
eval batch size or the number of processes); and, where rows carry a graded `score`, Spearman
and Pearson correlations of the pair's cosine similarity with it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ftjax import metrics as metrics_lib
from ftjax import retrieval
from ftjax.errors import UserError
from ftjax.models import pooling

MODEL_TASK = "base"
uses_reference = False


def load_data(data_cfg, tokenizer, *, seed: int):
  from ftjax.data.pairs import load_pair_data  # pylint: disable=g-import-not-at-top
  return load_pair_data(data_cfg, tokenizer, seed=seed)


def model_kwargs(dataset) -> dict:
  del dataset
  return {}


def batch_counts(local_batch) -> tuple[int, int]:
  """Real pairs and non-padding tokens (both sides) in a host batch."""
  weights = local_batch["weights"]
  return int(weights.sum()), int((local_batch["attention_mask"].sum((1, 2)) * (weights > 0)).sum())


@dataclasses.dataclass(frozen=True)
class Options:
  pooling: str = "mean"
  normalize: bool = True
  scale: float = 20.0
  symmetric: bool = False
  retrieval_k: tuple[int, ...] = (1, 5, 10)


def check_config(cfg) -> Options:
  e = cfg.objective.embedding
  if e.pooling not in pooling.POOLINGS:
    raise UserError(f"config key 'objective.embedding.pooling' must be one of {pooling.POOLINGS}, "
                    f"got {e.pooling!r}")
  for key in ("normalize", "symmetric"):
    if not isinstance(e[key], bool):
      raise UserError(f"config key 'objective.embedding.{key}' must be true or false, got "
                      f"{e[key]!r}")
  if isinstance(e.scale, bool) or not isinstance(e.scale, (int, float)) or not e.scale > 0:
    raise UserError(f"config key 'objective.embedding.scale' must be a number > 0, got {e.scale!r}")
  ks = tuple(e.retrieval_k)
  if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
    raise UserError("config key 'objective.embedding.retrieval_k' must be integers >= 1, got "
                    f"{ks!r}")
  return Options(pooling=e.pooling, normalize=e.normalize, scale=float(e.scale),
                 symmetric=e.symmetric, retrieval_k=tuple(sorted(set(ks))))


def configure(cfg) -> "Embedding":
  return Embedding(check_config(cfg))


def encode(opt: Options, model, input_ids, attention_mask, token_type_ids=None, rngs=None):
  """[N, T] token ids -> [N, H] fp32 sentence embeddings (pooled, normalised if configured)."""
  out = model(input_ids, attention_mask, token_type_ids, rngs=rngs)
  hidden = out[0] if isinstance(out, tuple) else out
  # Prompt tuning prepends virtual tokens: pool over the text's own positions.
  hidden = hidden[:, hidden.shape[1] - input_ids.shape[1]:]
  embeddings = pooling.pool(hidden, attention_mask, opt.pooling)
  return pooling.normalize(embeddings) if opt.normalize else embeddings


def pair_embeddings(opt: Options, model, batch, rngs=None):
  """Anchor and positive embeddings [B, H] each of a [B, 2, T] pair batch, one forward pass."""
  b, _, t = batch["input_ids"].shape
  flat = {k: batch[k].reshape(2 * b, t) for k in ("input_ids", "attention_mask", "token_type_ids")}
  embeddings = encode(opt, model, flat["input_ids"], flat["attention_mask"],
                      flat["token_type_ids"], rngs).reshape(b, 2, -1)
  return embeddings[:, 0], embeddings[:, 1]


def ranking_losses(scale: float, queries, candidates, query_groups, candidate_groups,
                   candidate_weights):
  """Per-query loss [Q] of picking candidate q (its own, on the diagonal) among all candidates.

  Scores are scale x cosine similarity. A candidate of the query's group other than its own, or
  with weight 0 (padding), is masked out of the softmax.
  """
  scores = scale * (pooling.normalize(queries) @ pooling.normalize(candidates).T)
  own = jnp.eye(queries.shape[0], candidates.shape[0], dtype=bool)
  same_group = query_groups[:, None] == candidate_groups[None, :]
  keep = own | (~same_group & (candidate_weights[None, :] > 0))
  scores = jnp.where(keep, scores, -jnp.inf)
  return jax.nn.logsumexp(scores, axis=-1) - jnp.diagonal(scores)


def mnrl_losses(opt: Options, anchors, positives, groups, weights):
  """MultipleNegativesRanking loss per pair [B] (the symmetric variant with `opt.symmetric`)."""
  loss = ranking_losses(opt.scale, anchors, positives, groups, groups, weights)
  if opt.symmetric:
    loss = (loss + ranking_losses(opt.scale, positives, anchors, groups, groups, weights)) / 2
  return loss


class Embedding:
  """The `embedding` objective with its options bound."""

  MODEL_TASK = MODEL_TASK
  uses_reference = False
  load_data = staticmethod(load_data)
  model_kwargs = staticmethod(model_kwargs)
  batch_counts = staticmethod(batch_counts)

  def __init__(self, options: Options):
    self.options = options
    k = options.retrieval_k[-1]
    self.HEADLINE_METRICS = ("loss", f"hit@{options.retrieval_k[0]}", f"mrr@{k}", f"ndcg@{k}")  # pylint: disable=invalid-name
    self.METRICS = {"loss": "min", f"mrr@{k}": "max", f"ndcg@{k}": "max",  # pylint: disable=invalid-name
                    "spearman": "max", "pearson": "max",
                    **{f"{m}@{j}": "max" for m in ("recall", "hit") for j in options.retrieval_k}}

  def train_loss(self, model, batch, rngs):
    """Mean MNRL loss over real pairs; in-batch top-1 accuracy for the progress bar."""
    anchors, positives = pair_embeddings(self.options, model, batch, rngs)
    weights = batch["weights"].astype(jnp.float32)
    per_pair = mnrl_losses(self.options, anchors, positives, batch["groups"], weights)
    denominator = jnp.maximum(weights.sum(), 1.0)
    sims = pooling.normalize(anchors) @ pooling.normalize(positives).T
    sims = jnp.where(weights[None, :] > 0, sims, -jnp.inf)
    correct = (sims.argmax(-1) == jnp.arange(sims.shape[0])).astype(jnp.float32)
    return ((jnp.where(weights > 0, per_pair, 0.0) * weights).sum() / denominator,
            {"in_batch_accuracy": (correct * weights).sum() / denominator,
             "loss_weight": weights.sum()})

  def row_outputs(self, model, batch):
    """The eval step's output: anchor / positive embeddings and each row's split index."""
    anchors, positives = pair_embeddings(self.options, model, batch)
    return {"anchors": anchors, "positives": positives, "index": batch["index"]}

  def metrics_from_rows(self, outputs: list[dict], dataset, split: str) -> dict:
    """Metrics of a split from its embedded batches (`row_outputs`, every process's rows)."""
    index = np.concatenate([np.asarray(o["index"]) for o in outputs])
    real = index >= 0
    order = np.argsort(index[real], kind="stable")
    anchors, positives = (np.concatenate([np.asarray(o[k]) for o in outputs])[real][order]
                          for k in ("anchors", "positives"))
    groups = dataset.groups(split)
    if len(anchors) != len(groups):
      raise ValueError(f"embedded {len(anchors)} rows of split '{split}', which has {len(groups)}")
    out = retrieval.retrieval_metrics(anchors, positives, groups, groups, self.options.retrieval_k)
    losses = ranking_losses(self.options.scale, jnp.asarray(anchors), jnp.asarray(positives),
                            jnp.asarray(groups), jnp.asarray(groups), jnp.ones(len(groups)))
    out["loss"] = float(jnp.mean(losses))
    out["num_pairs"] = int(len(groups))
    scores = dataset.scores(split)
    graded = np.isfinite(scores)
    if graded.sum() >= 2:
      cosine = (retrieval.unit(anchors) * retrieval.unit(positives)).sum(-1)
      out["spearman"] = metrics_lib.spearman(cosine[graded], scores[graded])
      out["pearson"] = metrics_lib.pearson(cosine[graded], scores[graded])
      out["num_graded_pairs"] = int(graded.sum())
    return out
