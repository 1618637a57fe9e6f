"""What every chat-template dataset shares: a TFDS builder's splits, tokenised lazily per shard.

`ChatData` (SFT conversations) and `PreferenceData` (chosen/rejected pairs) both render records
with the tokenizer's chat template, pad batches to a bucket of their longest row and cut the
training split to `max_train_examples`; this base holds those options and the split bookkeeping.
"""

import math

import grain

from ftjax.data import builders
from ftjax.data import chat_template
from ftjax.data import collate as collate_lib
from ftjax.data import tokenization
from ftjax.errors import UserError


class TemplatedSplits:
  """A builder's splits with the options every chat-template pipeline reads."""

  RENDERS_CHATS = True  # False: plain text, no chat template (`template` is None)

  def __init__(self, builder, tokenizer, *, max_length: int, padding: str = "bucket",
               bucket_boundaries=(), chat_template_name: str = "", train_split: str = "train",
               max_train_examples: int = 0, seed: int = 0, group_by_length: int = 0):
    if padding not in collate_lib.PADDINGS:
      raise UserError(f"data.padding={padding!r} is not one of {list(collate_lib.PADDINGS)}")
    if max_length < 2:
      raise UserError(f"data.max_length={max_length} must be >= 2")
    self._builder = builder
    self.tokenizer = tokenizer
    self.template = (chat_template.resolve_template(tokenizer, chat_template_name)
                     if self.RENDERS_CHATS else None)
    self.max_length = int(max_length)
    self._padding = padding
    self._boundaries = tuple(int(b) for b in bucket_boundaries)
    self._train_split = train_split
    self._max_train = int(max_train_examples)
    self._subset_seed = int(seed)
    self._group_by_length = int(group_by_length)
    self.pad_id = tokenization.pad_id(tokenizer)
    self._cache = {}
    self._lengths = {}
    self.split_sizes: dict[str, int] = {
        split: len(self._records(split)) for split in builder.info.splits}
    metadata = builder.info.metadata or {}
    # Records the builder left out, by reason (e.g. no assistant turn, identical replies).
    self.skipped: dict[str, int] = {k: int(v) for k, v in dict(metadata.get("skipped", {})).items()}

  @property
  def train_split(self) -> str:
    return self._train_split

  def _records(self, split: str) -> grain.MapDataset:
    """The split's records; the training split cut to `max_train_examples` if set."""
    return builders.split_records(self._builder, split, train_split=self._train_split,
                                  max_train=self._max_train, seed=self._subset_seed)

  def _padded_length(self, longest: int) -> int:
    return collate_lib.padded_length(longest, self.max_length, self._padding, self._boundaries)

  def _num_eval_batches(self, split: str, batch_size: int, shard_count: int) -> int:
    """The same on every shard: ceil(ceil(N / shards) / batch_size)."""
    return math.ceil(math.ceil(self.split_sizes[split] / shard_count) / batch_size)

  def _eval_chunks(self, items, split: str, batch_size: int, shard_count: int, longest):
    """`(rows of eval batch b, its agreed padded length or None)` for every batch b of a shard."""
    for b in range(self._num_eval_batches(split, batch_size, shard_count)):
      yield (items[b * batch_size:(b + 1) * batch_size],
             None if longest is None else max(int(longest[b]), 1))


def options(data_cfg, *, seed: int) -> dict:
  """The `TemplatedSplits` options a data config sets."""
  return dict(max_length=data_cfg.max_length, padding=data_cfg.padding,
              bucket_boundaries=tuple(data_cfg.bucket_boundaries or ()),
              chat_template_name=data_cfg.get("chat_template", ""),
              train_split=data_cfg.train_split, max_train_examples=data_cfg.max_train_examples,
              seed=seed, group_by_length=data_cfg.get("group_by_length", 0))


def text(value) -> str:
  """A TFDS text feature as str (the numpy reader gives bytes)."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
