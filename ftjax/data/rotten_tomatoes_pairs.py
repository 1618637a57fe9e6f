"""TFDS builder of same-movie snippet pairs from Rotten Tomatoes (`data.name =
"rotten_tomatoes_pairs"`), for sentence-embedding fine-tuning with real data.

Two critics' snippets about one movie are a positive pair: they share a topic (the film, its
cast and plot), whatever their sentiment. The snippets are those of `rotten_tomatoes` (plot
rows dropped, normalised duplicates removed over the whole corpus) and the movies keep that
builder's split (SHA-256 of the movie name, 80/10/10), so the splits are movie-disjoint: no
movie, and so no positive, of validation or test was seen in training. Within a movie the
snippets, in corpus order, pair up (1st with 2nd, 3rd with 4th, ...); a movie's last odd
snippet is left out, so each snippet is in one pair at most. The pair's group is its movie:
every positive of the same movie is relevant to a query (`ftjax.retrieval`), and none is an
in-batch negative in training.
"""

import collections

import tensorflow_datasets as tfds

from ftjax.data import pair_files
from ftjax.data import rotten_tomatoes


def movie_pairs(rows: list[dict]) -> dict[str, list[dict]]:
  """Deduplicated review rows -> encoded pair examples per split (corpus order)."""
  by_movie = collections.defaultdict(list)
  for index, row in enumerate(rows):
    by_movie[row["movie_name"]].append((index, row["text"]))
  by_split = {split: [] for split in rotten_tomatoes.SPLITS}
  for movie, snippets in by_movie.items():
    split = rotten_tomatoes.split_of_movie(movie)
    for (i, anchor), (j, positive) in zip(snippets[0::2], snippets[1::2]):
      by_split[split].append(pair_files.encode_example(f"{i}-{j}", anchor, positive, group=movie))
  return by_split


class RottenTomatoesPairs(tfds.core.GeneratorBasedBuilder):
  """(snippet, snippet of the same movie) pairs; group = the movie."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Same-movie pairs, movie-disjoint 80/10/10 splits."}
  BUILDER_CONFIGS = [rotten_tomatoes.RottenTomatoesConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(description=__doc__, features=pair_files.features(),
                                          metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # The resolver owns downloading and caching.
    rows, removed = rotten_tomatoes.deduplicated_reviews(self.builder_config)
    self.info.metadata["duplicates_removed"] = removed
    self.info.metadata["source"] = self.builder_config.source
    return {split: self._generate_examples(items) for split, items in movie_pairs(rows).items()}

  def _generate_examples(self, items):
    for example in items:
      yield example["id"], example
