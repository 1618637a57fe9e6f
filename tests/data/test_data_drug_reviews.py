"""Builds the real Drugs.com reviews once (the wheel cached under $FTJAX_CACHE) and checks the
cleaning, the split and leakage; a small classification run reads it end to end."""

import collections

import pytest

from ftjax.data import drug_reviews
from ftjax.data import text_norm


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  builder = drug_reviews.DrugReviews(data_dir=tmp_path_factory.mktemp("tfds"))
  builder.download_and_prepare(file_format="array_record")
  return builder


def _rows(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def test_splits_labels_and_no_shared_review(builder):
  sizes = {s: builder.info.splits[s].num_examples for s in drug_reviews.SPLITS}
  removed = builder.info.metadata["duplicates_removed"]
  assert sum(sizes.values()) == 600 + 379 - removed["total"]
  assert sizes["test"] <= 379 and 60 <= sizes["validation"] <= 120, sizes
  assert builder.info.features["label"].names == ["negative", "neutral", "positive"]
  texts = {}
  for split in drug_reviews.SPLITS:
    rows = _rows(builder, split)
    texts[split] = {text_norm.normalize(r["text"].decode()) for r in rows}
    assert len(texts[split]) == len(rows)
    labels = collections.Counter(int(r["label"]) for r in rows)
    assert all(labels[k] for k in range(3)), (split, labels)  # every class in every split
    assert 0.5 < labels[2] / len(rows) < 0.8, (split, labels)  # ~64% positive
    assert all(r["condition"] for r in rows[:20])
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not texts[a] & texts[b]


def test_reviews_are_cleaned(builder):
  texts = [r["text"].decode() for r in _rows(builder, "train")]
  assert not any(t.startswith('"') or "&#039;" in t or "&rsquo;" in t for t in texts)
  assert drug_reviews.clean_review('"""It&#039;s great"""') == "It's great"
