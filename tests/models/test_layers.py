"""ftjax.models.layers: the fp32 LayerNorm of BERT and GPT-2 against torch's LayerNorm."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ftjax.models import layers


def _inputs(seed, h=768):
  """GPT-2-like residual-stream rows: per-row means 100-1000, standard deviations 1-10."""
  rng = np.random.default_rng(seed)
  mean = rng.uniform(100.0, 1000.0, (4, 16, 1))
  std = rng.uniform(1.0, 10.0, (4, 16, 1))
  x = (mean + std * rng.standard_normal((4, 16, h))).astype(np.float32)
  scale = rng.normal(1.0, 0.1, h).astype(np.float32)
  bias = rng.normal(0.0, 0.1, h).astype(np.float32)
  return x, scale, bias, rng.standard_normal(x.shape).astype(np.float32)


def _torch(x, scale, bias, cotangent, eps, dtype):
  """torch.nn.LayerNorm's output and input gradient (of sum(out * cotangent)) in `dtype`."""
  ln = torch.nn.LayerNorm(x.shape[-1], eps=eps).to(dtype)
  with torch.no_grad():
    ln.weight.copy_(torch.from_numpy(scale))
    ln.bias.copy_(torch.from_numpy(bias))
  tx = torch.from_numpy(x).to(dtype).requires_grad_(True)
  out = ln(tx)
  (out * torch.from_numpy(cotangent).to(dtype)).sum().backward()
  return out.detach().double().numpy(), tx.grad.double().numpy()


@pytest.mark.parametrize('eps', [1e-12, 1e-5])  # BERT's, GPT-2's
def test_layernorm_matches_torch_at_large_activations(eps):
  """The reference is torch's LayerNorm in float64 on the same float32 inputs: ours (float32)
  is within 1e-5 of it, and no further from it than torch's own float32 kernel."""
  x, scale, bias, cotangent = _inputs(0)
  ln = layers.Fp32LayerNorm(x.shape[-1], eps, dtype=jnp.float32, param_dtype=jnp.float32,
                            rngs=nnx.Rngs(0))
  ln.scale[...] = scale
  ln.bias[...] = bias
  out, vjp = jax.vjp(ln, jnp.asarray(x))
  grad = np.asarray(vjp(jnp.asarray(cotangent))[0], np.float64)
  out = np.asarray(out, np.float64)
  want, want_grad = _torch(x, scale, bias, cotangent, eps, torch.float64)
  torch32, torch32_grad = _torch(x, scale, bias, cotangent, eps, torch.float32)
  error = np.abs(out - want).max()
  assert error <= 1e-5, error
  assert error <= np.abs(torch32 - want).max()
  np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-4 * np.abs(want_grad).max())
  assert np.abs(grad - want_grad).max() <= np.abs(torch32_grad - want_grad).max() * 2
