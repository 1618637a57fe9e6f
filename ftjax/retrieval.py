"""Retrieval metrics of embeddings: rank a corpus for each query by cosine similarity.

The protocol (`ftjax.tasks.embedding`): the queries are a split's anchors, the corpus is the
same split's positives, and a query's relevant documents are the positives of its group (a pair
alone is its own group). Definitions are sentence-transformers' `InformationRetrievalEvaluator`
ones:

  recall@k   share of the query's relevant documents among the top k, mean over queries
  hit@k      1 if any relevant document is among the top k (its "accuracy@k"), mean
  mrr@k      1 / rank of the first relevant document if within the top k, else 0, mean
  ndcg@k     binary-relevance nDCG of the top k, mean

Ranking is by descending cosine similarity, ties broken by corpus order (a stable sort).
"""

from collections.abc import Sequence

import numpy as np

_QUERY_CHUNK = 1024  # queries ranked at a time: a [chunk, corpus] similarity block in memory


def unit(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def first_ranks(queries, corpus, query_groups, corpus_groups, depth: int):
  """For each query: the 0/1 relevance of its top `depth` documents [Q, depth] and its number of
  relevant documents [Q]."""
  queries, corpus = unit(queries), unit(corpus)
  query_groups, corpus_groups = np.asarray(query_groups), np.asarray(corpus_groups)
  depth = min(depth, len(corpus))
  hits, relevant = [], []
  for start in range(0, len(queries), _QUERY_CHUNK):
    sims = queries[start:start + _QUERY_CHUNK] @ corpus.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :depth]
    same = query_groups[start:start + _QUERY_CHUNK, None] == corpus_groups[None, :]
    hits.append(np.take_along_axis(same, top, axis=1))
    relevant.append(same.sum(1))
  return np.concatenate(hits).astype(np.float64), np.concatenate(relevant)


def retrieval_metrics(queries, corpus, query_groups, corpus_groups,
                      ks: Sequence[int] = (1, 5, 10)) -> dict:
  """recall@k, hit@k for each k, and mrr@K, ndcg@K at the largest K (see the module doc).

  Queries without a relevant document in the corpus are left out (counted in
  `queries_without_relevant`); `num_queries` counts those scored.
  """
  ks = sorted({int(k) for k in ks})
  if not ks or ks[0] < 1:
    raise ValueError(f"retrieval cut-offs must be >= 1, got {list(ks)}")
  hits, relevant = first_ranks(queries, corpus, query_groups, corpus_groups, ks[-1])
  scored = relevant > 0
  hits, relevant = hits[scored], relevant[scored]
  out = {"num_queries": int(scored.sum()), "queries_without_relevant": int((~scored).sum()),
         "corpus_size": int(len(corpus))}
  if not len(hits):
    return out
  for k in ks:
    found = hits[:, :k].sum(1)
    out[f"recall@{k}"] = float((found / relevant).mean())
    out[f"hit@{k}"] = float((found > 0).mean())
  k = ks[-1]
  depth = hits.shape[1]
  first = np.where(hits.any(1), hits.argmax(1), depth)  # 0-based rank of the first hit
  out[f"mrr@{k}"] = float(np.where(first < k, 1.0 / (first + 1), 0.0).mean())
  discounts = 1.0 / np.log2(np.arange(2, depth + 2))
  dcg = (hits[:, :k] * discounts[:k]).sum(1)
  ideal = np.array([discounts[:min(int(n), k)].sum() for n in relevant])
  out[f"ndcg@{k}"] = float((dcg / ideal).mean())
  return out
