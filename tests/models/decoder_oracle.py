"""Shared by the decoder ports' parity tests: a left-padded batch, transformers' logits on it
(positions counted from the first real token, as ftjax does), a jitted ftjax forward and a
comparison at real positions only."""

from flax import nnx
import numpy as np
import torch


def left_padded_batch(vocab: int, seed: int = 0, batch: int = 3, seq: int = 8, low: int = 0):
  """Token ids in [low, vocab) with left padding in two rows, and their 0/1 mask."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(low, vocab, (batch, seq))
  mask = np.ones((batch, seq), np.int64)
  mask[1, :3] = 0
  mask[2, :6] = 0
  ids[mask == 0] = 0
  return ids, mask


def torch_logits(model, ids, mask):
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 position_ids=torch.from_numpy(pos)).logits.float().numpy()


@nnx.jit
def jit_logits(model, ids, mask=None, segment_ids=None):
  """A jitted forward: one compile beats op-by-op dispatch on tiny models."""
  if segment_ids is None:
    return model(ids, mask)
  return model(ids, mask, segment_ids=segment_ids)


def assert_real_close(got, want, mask, atol=1e-4):
  """Compares logits at real (non-padding) positions only."""
  real = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[real], want[real], atol=atol)
