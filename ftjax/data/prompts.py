"""Prompt data for RL objectives (`grpo`): TFDS prompts -> rendered, tokenised -> prompt batches.

The trainer calls `load_prompt_data(data_cfg, tokenizer, seed=..., max_prompt_length=...)`
(through `ftjax.tasks.grpo`). Builders: `prompt_files` (JSONL) and `arithmetic` (seeded
problems). Each prompt is rendered with the chat template and a generation prompt (the
assistant turn opened); a prompt longer than `max_prompt_length` tokens (`data.max_length`
minus the completion budget) leaves no room to answer: it is dropped, counted per split,
logged and in the data report.

Training batches are the prompts' indices only: `{"example": [B] int32}` into the split's kept
prompts (`examples(split)[i]` gives the ids, answer and extra fields). The rollout phase
generates from them (every process generates the global batch, so it gathers the indices);
the iterator is `epoch_shuffle.GlobalBatchSlices`, whose state is one integer.
"""

from collections.abc import Iterator
import json

from absl import logging
import grain
import numpy as np

from ftjax.data import builders
from ftjax.data import chat_template
from ftjax.data import epoch_shuffle
from ftjax.data import templated
from ftjax.errors import UserError

__all__ = ["PromptData", "load_prompt_data"]


class PromptData(templated.TemplatedSplits):
  """One prepared prompt dataset, rendered and tokenised lazily per split."""

  def __init__(self, builder, tokenizer, *, max_prompt_length: int, **options):
    super().__init__(builder, tokenizer, **options)
    if max_prompt_length < 1:
      raise UserError(f"data.max_length={self.max_length} leaves no room for a prompt besides "
                      "the completion budget (objective.grpo.max_new_tokens)")
    self.max_prompt_length = int(max_prompt_length)
    self.dropped_prompt_too_long: dict[str, int] = {}

  def records(self, split: str) -> list[dict]:
    """The split's prompts as `{"id", "messages", "answer", "extra"}`, in eval order."""
    records = self._records(split)
    return [{"id": templated.text(r["id"]),
             "messages": json.loads(templated.text(r["prompt_json"])),
             "answer": templated.text(r["answer"]),
             "extra": json.loads(templated.text(r["extra_json"]) or "{}")}
            for r in (records[i] for i in range(len(records)))]

  def _encoded(self, split: str) -> list[dict]:
    """The split's usable prompts: each record with `text` and `input_ids` (cached)."""
    if split not in self._cache:
      records = self.records(split)
      texts = [chat_template.render(self.tokenizer, r["messages"], self.template,
                                    add_generation_prompt=True) for r in records]
      kept, lengths = [], []
      for record, text in zip(records, texts):
        ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
        lengths.append(len(ids))
        if len(ids) <= self.max_prompt_length:
          kept.append({**record, "text": text, "input_ids": ids})
      self._lengths[split] = np.asarray(lengths, np.int64)
      dropped = len(records) - len(kept)
      self.dropped_prompt_too_long[split] = dropped
      if dropped:
        logging.warning("prompt data %s: %d of %d prompts dropped, longer than %d tokens "
                        "(data.max_length minus objective.grpo.max_new_tokens)", split, dropped,
                        len(records), self.max_prompt_length)
      self._cache[split] = kept
    return self._cache[split]

  def examples(self, split: str) -> list[dict]:
    """The split's usable prompts (`records` plus `text`, `input_ids`); indices of batches."""
    return self._encoded(split)

  def texts(self, split: str) -> list[str]:
    """Each prompt with its answer, for duplicate and leakage checks."""
    return [f"{e['text']}\x1f{e['answer']}" for e in self._encoded(split)]

  def token_lengths(self, split: str) -> np.ndarray:
    """Rendered token count of every prompt of the split, dropped ones included."""
    self._encoded(split)
    return self._lengths[split]

  def prompts(self, split: str, limit: int | None = None) -> list[dict]:
    """Generation prompts for samples: the answer (if any) as the reference."""
    return [{"messages": e["messages"], "text": e["text"], "reference": e["answer"],
             "input_ids": e["input_ids"]} for e in self._encoded(split)[:limit]]

  def train_iterator(self, batch_size: int, *, seed: int, shard_index: int = 0,
                     shard_count: int = 1) -> grain.DatasetIterator:
    """Endless shuffled batches `{"example": [batch_size] int32}` of this process's prompts of
    each global batch (`get_state()` / `set_state()` resume)."""
    examples = self._encoded(self._train_split)
    if not examples:
      raise UserError(f"training split {self._train_split!r} has no usable prompt")
    dataset = epoch_shuffle.GlobalBatchSlices(
        list(range(len(examples))), np.array([len(e["input_ids"]) for e in examples]), seed=seed,
        batch_size=batch_size, shard_index=shard_index, shard_count=shard_count,
        collate=lambda chunk, longest: {"example": np.asarray(chunk, np.int32)})
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=0,
                                                          prefetch_buffer_size=0)))

  def eval_batches(self, split: str, batch_size: int, *, shard_index: int = 0,
                   shard_count: int = 1, longest=None) -> Iterator[dict]:
    """The split's prompts in order, `batch_size` at a time, as lists of examples (a
    generation eval reads them on the host; shards are not used)."""
    del shard_index, shard_count, longest
    examples = self._encoded(split)
    for start in range(0, len(examples), batch_size):
      yield examples[start:start + batch_size]


def load_prompt_data(data_cfg, tokenizer, *, seed: int, max_prompt_length: int) -> PromptData:
  """Prepares the dataset named by `data_cfg` (building it once) and wraps it for training."""
  builder = builders.prepare(data_cfg)
  return PromptData(builder, tokenizer, max_prompt_length=max_prompt_length,
                    **templated.options(data_cfg, seed=seed))
