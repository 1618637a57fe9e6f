"""Preference data for the `preference` objective: TFDS pairs -> rendered + masked -> pair batches.

The trainer calls only `load_preference_data(data_cfg, tokenizer, seed=...)` (through
`ftjax.tasks.preference.load_data`). Config keys read (under `data.`): name
(`preference_files` or `hhh`), files, chat_template, train_split, max_length, padding, bucket_boundaries,
data_dir, max_train_examples.

Each pair is rendered twice with the chat template, prompt + chosen reply and prompt + rejected
reply, and the loss mask marks the final reply only (reply + end-of-turn token, as in SFT). A
pair longer than `max_length` loses the end of its reply; a pair whose prompt leaves no reply
token within `max_length` teaches nothing and is dropped (both counted per split, logged and in
the data report). With `data.truncate_prompt` (TRL's `keep_end` for prompts) a too-long pair
first loses the start of its prompt, the same tokens on both sides (at least one prompt token
stays), so long requests keep their replies instead of being dropped
(`prompt_truncated`, counted per split).

Batches are dicts of numpy arrays laid out as SFT rows (`ftjax.data.packing`) with a pair
axis: `input_ids`, `targets`, `segment_ids`, `positions`, `attention_mask` [B, 2, T] int32,
`loss_mask` [B, 2, T] float32 (index 0 of the pair axis is the chosen reply, 1 the rejected),
and `weights` [B] float32 (1 for a pair, 0 for a padding row). The pair axis stays whole under
batch sharding and gradient accumulation, which cut the leading axis only.
"""

from collections.abc import Iterator
import json

from absl import logging
import grain
import numpy as np

from ftjax.data import builders
from ftjax.data import chat_template
from ftjax.data import epoch_shuffle
from ftjax.data import packing as packing_lib
from ftjax.data import templated
from ftjax.errors import UserError

__all__ = ["PreferenceData", "load_preference_data"]

# (chosen (ids, mask), rejected (ids, mask)), each as `packing.Example`.
Pair = tuple[packing_lib.Example, packing_lib.Example]


class PreferenceData(templated.TemplatedSplits):
  """One prepared preference dataset, rendered and tokenised lazily per (split, shard)."""

  def __init__(self, builder, tokenizer, *, truncate_prompt: bool = False, **options):
    super().__init__(builder, tokenizer, **options)
    self.truncate_prompt = bool(truncate_prompt)
    self.prompt_truncated: dict[str, int] = {}  # pairs whose prompt start was cut
    # Per split, over the shards tokenised so far: pairs whose reply was cut at max_length, and
    # pairs dropped because the prompt left no reply token. (`skipped`: pairs the builder left
    # out, with an empty reply or identical replies.)
    self.truncated: dict[str, int] = {}
    self.dropped_prompt_too_long: dict[str, int] = {}

  def pairs(self, split: str, shard_index: int = 0, shard_count: int = 1) -> list[dict]:
    """The split's pairs as `{"id", "prompt" (messages), "chosen", "rejected", "category"}`, in
    eval order."""
    records = self._records(split)[shard_index::shard_count]
    out = []
    for i in range(len(records)):
      r = records[i]
      out.append({"id": templated.text(r["id"]), "prompt": json.loads(templated.text(r["prompt_json"])),
                  "chosen": templated.text(r["chosen"]), "rejected": templated.text(r["rejected"]),
                  "category": templated.text(r["category"])})
    return out

  def conversations(self, split: str, shard_index: int = 0, shard_count: int = 1
                    ) -> list[list[dict]]:
    """Each pair's prompt followed by its chosen reply (for generation prompts and reports)."""
    return [p["prompt"] + [{"role": "assistant", "content": p["chosen"]}]
            for p in self.pairs(split, shard_index, shard_count)]

  def texts(self, split: str) -> list[str]:
    """Each pair as one text, prompt + chosen + rejected, for duplicate and leakage checks."""
    return [chat_template.render(self.tokenizer, p["prompt"], self.template,
                                 add_generation_prompt=True)
            + f"\x1f{p['chosen']}\x1f{p['rejected']}" for p in self.pairs(split)]

  def prompts(self, split: str, limit: int | None = None) -> list[dict]:
    """Generation prompts: each pair's prompt, with the chosen reply as the reference."""
    out = []
    for p in self.pairs(split)[:limit]:
      text = chat_template.render(self.tokenizer, p["prompt"], self.template,
                                  add_generation_prompt=True)
      ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
      out.append({"messages": p["prompt"], "text": text, "reference": p["chosen"],
                  "input_ids": np.asarray(ids, np.int32)})
    return out

  def _encoded(self, split: str, shard_index: int, shard_count: int) -> list[Pair]:
    """Token ids + reply masks of one shard's pairs, truncated at max_length (cached)."""
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
    key = (split, shard_index, shard_count)
    if key not in self._cache:
      pairs = self.pairs(split, shard_index, shard_count)
      sides = [p["prompt"] + [{"role": "assistant", "content": p[side]}]
               for p in pairs for side in ("chosen", "rejected")]
      encoded = chat_template.encode(self.tokenizer, sides, self.template, last_reply_only=True)
      self._lengths[key] = np.array([max(len(encoded[2 * i][0]), len(encoded[2 * i + 1][0]))
                                     for i in range(len(pairs))], np.int64)
      kept, truncated, dropped, prompt_cut = [], 0, 0, 0
      for i in range(len(pairs)):
        two = encoded[2 * i:2 * i + 2]
        overflow = max(len(ids) for ids, _ in two) - self.max_length
        if self.truncate_prompt and overflow > 0:
          # The same prompt tokens off both sides (the replies stay conditioned alike).
          prompt = min(int(np.argmax(np.asarray(mask) > 0)) for _, mask in two)
          cut = min(overflow, prompt - 1)
          if cut > 0:
            prompt_cut += 1
            two = [(ids[cut:], mask[cut:]) for ids, mask in two]
        if any(len(ids) > self.max_length for ids, _ in two):
          truncated += 1
          two = [(ids[:self.max_length], mask[:self.max_length]) for ids, mask in two]
        if not all(mask[1:].any() for _, mask in two):  # only targets (positions >= 1) count
          dropped += 1
          continue
        kept.append((two[0], two[1]))
      self.truncated[split] = self.truncated.get(split, 0) + truncated
      self.dropped_prompt_too_long[split] = self.dropped_prompt_too_long.get(split, 0) + dropped
      self.prompt_truncated[split] = self.prompt_truncated.get(split, 0) + prompt_cut
      if truncated or dropped:
        logging.warning("preference data %s shard %d/%d: %d of %d pairs cut at max_length=%d; "
                        "%d dropped, their prompt leaving no reply token", split, shard_index,
                        shard_count, truncated, len(pairs), self.max_length, dropped)
      self._cache[key] = kept
    return self._cache[key]

  def token_lengths(self, split: str) -> np.ndarray:
    """Rendered token count of each pair's longer side before truncation, in `pairs` order."""
    self._encoded(split, 0, 1)
    return self._lengths[(split, 0, 1)]

  def _collate(self, pairs: list[Pair], batch_size=None, longest=None) -> dict:
    """Pairs as [B, 2, T] rows padded to a bucket of the longest side (or of `longest`)."""
    if longest is None:
      longest = max((len(ids) for pair in pairs for ids, _ in pair), default=1)
    length = self._padded_length(longest)
    size = batch_size or len(pairs)
    rows = [[side] for pair in pairs for side in pair]
    flat = packing_lib.collate_rows(rows, length=length, pad_id=self.pad_id, batch_size=2 * size)
    batch = {k: v.reshape(size, 2, length) for k, v in flat.items()}
    batch["weights"] = (np.arange(size) < len(pairs)).astype(np.float32)
    return batch

  def train_iterator(self, batch_size: int, *, seed: int, shard_index: int = 0,
                     shard_count: int = 1) -> grain.DatasetIterator:
    """Endless shuffled batches of pairs: this process's `batch_size` pairs of each global batch
    (`epoch_shuffle.GlobalBatchSlices`, as for SFT; `get_state()` / `set_state()` resume)."""
    pairs = self._encoded(self._train_split, 0, 1)
    if not pairs:
      raise UserError(f"training split {self._train_split!r} has no usable pair")
    lengths = np.array([max(len(c[0]), len(r[0])) for c, r in pairs])
    dataset = epoch_shuffle.GlobalBatchSlices(
        pairs, lengths, seed=seed, batch_size=batch_size, shard_index=shard_index,
        shard_count=shard_count, group_by_length=self._group_by_length,
        collate=lambda chunk, longest: self._collate(chunk, longest=longest))
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                          prefetch_buffer_size=0)))

  def eval_batch_lengths(self, split: str, batch_size: int, *, shard_index: int = 0,
                         shard_count: int = 1) -> np.ndarray:
    """The longest side of each of this shard's eval batches (0: an all-padding one)."""
    pairs = self._encoded(split, shard_index, shard_count)
    return np.array([max((len(ids) for pair in pairs[b * batch_size:(b + 1) * batch_size]
                          for ids, _ in pair), default=0)
                     for b in range(self._num_eval_batches(split, batch_size, shard_count))],
                    np.int64)

  def eval_batches(self, split: str, batch_size: int, *, shard_index: int = 0,
                   shard_count: int = 1, longest=None) -> Iterator[dict]:
    """One pass over a split in a fixed order; every shard yields the same number of batches
    (missing pairs are padding rows, weight 0), each padded to `longest[b]` when given."""
    pairs = self._encoded(split, shard_index, shard_count)
    for chunk, length in self._eval_chunks(pairs, split, batch_size, shard_count, longest):
      yield self._collate(chunk, batch_size=batch_size, longest=length)


def load_preference_data(data_cfg, tokenizer, *, seed: int) -> PreferenceData:
  """Prepares the dataset named by `data_cfg` (building it once) and wraps it for training."""
  builder = builders.prepare(data_cfg)
  data = PreferenceData(builder, tokenizer, truncate_prompt=data_cfg.get("truncate_prompt", False),
                        **templated.options(data_cfg, seed=seed))
  if any(data.skipped.values()):
    logging.warning("preference data %s: skipped %s", builder.name, data.skipped)
  return data
