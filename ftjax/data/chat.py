"""Chat fine-tuning data for the causal-LM task: TFDS build -> rendered + masked -> LM batches.

The trainer calls only `load_chat_data(data_cfg, tokenizer, seed=...)` (through
`ftjax.tasks.causal_lm.load_data`). Config keys read (under `data.`): name (`chatterbot` or
`chat_files`), files, messages_field, chatterbot_categories, eval_fraction, chat_template,
packing, train_split, max_length, padding, bucket_boundaries, data_dir, max_train_examples.

Batches are dicts of numpy arrays (see `ftjax.data.packing`): `input_ids`, `targets`,
`segment_ids`, `positions`, `attention_mask` [B, T] int32 and `loss_mask` [B, T] float32.
Training rows pack several conversations (`data.packing`) at length `max_length`, or hold one
padded to a bucket; eval rows always hold one conversation (so every process can tell the
number of eval batches from the split size alone), bucketed, with all-zero padding rows
(`ftjax.data.lm_rows`, shared with plain-text data).
"""

import json

from absl import logging
import numpy as np

from ftjax.data import builders
from ftjax.data import chat_template
from ftjax.data import lm_rows
from ftjax.data import packing as packing_lib
from ftjax.data import templated

__all__ = ["ChatData", "load_chat_data"]


class ChatData(lm_rows.LMRows):
  """One prepared chat dataset, rendered and tokenised lazily per (split, shard)."""

  def __init__(self, builder, tokenizer, *, max_length: int, packing: bool = False, **options):
    super().__init__(builder, tokenizer, max_length=max_length, packing=packing, **options)
    # Per split, over the shards tokenised so far: conversations cut at max_length, and those
    # dropped because truncation left no assistant token to learn. (`skipped`: conversations
    # the builder left out, without an assistant turn or, for ChatterBot, duplicates.)
    self.truncated: dict[str, int] = {}
    self.dropped_no_loss: dict[str, int] = {}

  def conversations(self, split: str, shard_index: int = 0, shard_count: int = 1
                    ) -> list[list[dict]]:
    """The split's conversations (lists of `{"role", "content"}`), in eval order."""
    records = self._records(split)[shard_index::shard_count]
    return [json.loads(templated.text(records[i]["messages_json"])) for i in range(len(records))]

  def texts(self, split: str) -> list[str]:
    """Each conversation rendered with the chat template (for reports)."""
    return [chat_template.render(self.tokenizer, m, self.template)
            for m in self.conversations(split)]

  def prompts(self, split: str, limit: int | None = None) -> list[dict]:
    """Generation prompts: the history before each conversation's last assistant reply.

    Each item has `messages` (the history), `text` (rendered with the generation prompt, e.g.
    ending in `<|im_start|>assistant\\n`), `input_ids` (int32, no special tokens added: the
    template already has them) and `reference` (the reply the data gives).
    """
    out = []
    for messages in self.conversations(split)[:limit]:
      history, reference = chat_template.prompt_messages(messages)
      text = chat_template.render(self.tokenizer, history, self.template,
                                  add_generation_prompt=True)
      ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
      out.append({"messages": history, "text": text, "reference": reference,
                  "input_ids": np.asarray(ids, np.int32)})
    return out

  def _encoded(self, split: str, shard_index: int, shard_count: int
               ) -> list[packing_lib.Example]:
    """Token ids + assistant masks of one shard, truncated at max_length (cached)."""
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index={shard_index} not in [0, {shard_count})")
    key = (split, shard_index, shard_count)
    if key not in self._cache:
      encoded = chat_template.encode(
          self.tokenizer, self.conversations(split, shard_index, shard_count), self.template)
      self._lengths[key] = np.array([len(ids) for ids, _ in encoded], np.int64)
      kept, truncated, dropped = [], 0, 0
      for ids, mask in encoded:
        if len(ids) > self.max_length:
          truncated += 1
          ids, mask = ids[:self.max_length], mask[:self.max_length]
        if not mask[1:].any():  # Only targets (positions >= 1) are learnt.
          dropped += 1
          continue
        kept.append((ids, mask))
      self.truncated[split] = self.truncated.get(split, 0) + truncated
      self.dropped_no_loss[split] = self.dropped_no_loss.get(split, 0) + dropped
      if truncated or dropped:
        logging.warning("chat data %s shard %d/%d: %d of %d conversations truncated at "
                        "max_length=%d; %d dropped with no assistant token left", split,
                        shard_index, shard_count, truncated, len(encoded), self.max_length,
                        dropped)
      self._cache[key] = kept
    return self._cache[key]

  def token_lengths(self, split: str) -> np.ndarray:
    """Rendered token count of each conversation before truncation, in `conversations` order."""
    self._encoded(split, 0, 1)
    return self._lengths[(split, 0, 1)]


def load_chat_data(data_cfg, tokenizer, *, seed: int) -> ChatData:
  """Prepares the dataset named by `data_cfg` (building it once) and wraps it for training."""
  builder = builders.prepare(data_cfg)
  data = ChatData(builder, tokenizer, packing=data_cfg.get("packing", False),
                  **templated.options(data_cfg, seed=seed))
  if any(data.skipped.values()):
    logging.warning("chat data %s: skipped %s", builder.name, data.skipped)
  return data
