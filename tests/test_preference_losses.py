"""Preference losses against TRL's, and their gradients through a tiny Llama against torch autograd.

TRL (pinned in the test extra) is the oracle: DPO-family losses through `DPOTrainer._compute_loss`
(the loss code is inline there; its model call is replaced by one that returns fixed per-token
log-probs, and the reference log-probs are passed precomputed, TRL's own option), SimPO and
conservative DPO through `CPOTrainer.cpo_loss`, ORPO's odds-ratio term through
`ORPOTrainer.odds_ratio_loss`. Each is called unbound on a stand-in `self` holding the options.
"""

import collections
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ftjax.tasks import preference

B, T = 6, 9  # pairs, tokens per side
_ACCEL = types.SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x)


def _trl_dpo(loss_type, beta, eps, per_token, mask, ref):
  """TRL's DPO loss for per-token reply log-probs [2B, T-1] (chosen rows first; zero outside
  the reply), the shifted reply mask and reference sums [B, 2]."""
  from trl.trainer.dpo_trainer import DPOTrainer  # pylint: disable=g-import-not-at-top
  n, t = per_token.shape
  zeros = torch.zeros(n, t, dtype=per_token.dtype)
  outputs = types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                  is_top1=torch.zeros(n, t, dtype=torch.bool))
  stand_in = types.SimpleNamespace(
      model=types.SimpleNamespace(training=True), accelerator=_ACCEL, aux_loss_enabled=False,
      ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
      loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=eps,
      use_weighting=False, _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
      _total_train_tokens=0, _tp_size=1)
  inputs = {"input_ids": torch.zeros(n, t + 1, dtype=torch.long),
            "attention_mask": torch.ones(n, t + 1, dtype=torch.long),
            "completion_mask": torch.cat([torch.zeros(n, 1, dtype=torch.long), mask.long()], 1),
            "ref_chosen_logps": ref[:, 0], "ref_rejected_logps": ref[:, 1]}
  return DPOTrainer._compute_loss(stand_in, lambda **kw: outputs, inputs, False)  # pylint: disable=protected-access


def _trl_cpo(loss_type, beta, eps, gamma, chosen, rejected):
  from trl.experimental.cpo import CPOTrainer  # pylint: disable=g-import-not-at-top
  stand_in = types.SimpleNamespace(alpha=0.0, loss_type=loss_type, simpo_gamma=gamma, beta=beta,
                                   label_smoothing=eps, accelerator=_ACCEL)
  return CPOTrainer.cpo_loss(stand_in, chosen, rejected)[0].mean()


def _trl_orpo_ratio(beta, chosen_mean, rejected_mean):
  from trl.experimental.orpo import ORPOTrainer  # pylint: disable=g-import-not-at-top
  stand_in = types.SimpleNamespace(beta=beta, accelerator=_ACCEL)
  return ORPOTrainer.odds_ratio_loss(stand_in, chosen_mean, rejected_mean)[0]


def trl_loss(opt: preference.Options, per_token, mask, ref=None):
  """TRL's loss for `opt` (ftjax's names), on torch per-token reply log-probs [2B, T-1]."""
  sums = per_token.sum(1).reshape(2, -1).T  # [B, 2]
  counts = mask.sum(1).reshape(2, -1).T.clamp(min=1.0)
  mean = sums / counts
  nll = -mean[:, 0]
  sft = opt.sft_weight * nll.mean() if opt.sft_weight else 0.0
  if opt.loss == "simpo":
    return _trl_cpo("simpo", opt.beta, opt.label_smoothing, opt.simpo_gamma, mean[:, 0],
                    mean[:, 1]) + sft
  if opt.loss == "orpo":  # ftjax averages the NLL per pair (exact under accumulation)
    return nll.mean() - _trl_orpo_ratio(opt.beta, mean[:, 0], mean[:, 1]).mean()
  if opt.loss == "sigmoid" and opt.label_smoothing:  # cDPO: TRL's smoothed sigmoid on log-ratios
    ratios = sums - ref
    return _trl_cpo("sigmoid", opt.beta, opt.label_smoothing, 0.0, ratios[:, 0],
                    ratios[:, 1]) + sft
  return _trl_dpo(opt.loss, opt.beta, opt.label_smoothing, per_token, mask, ref) + sft


OPTIONS = {
    "sigmoid": preference.Options("sigmoid", beta=0.1),
    "cdpo": preference.Options("sigmoid", beta=0.3, label_smoothing=0.2),
    "robust": preference.Options("robust", beta=0.2, label_smoothing=0.1),
    "ipo": preference.Options("ipo", beta=0.5),
    "hinge": preference.Options("hinge", beta=0.7),
    "simpo": preference.Options("simpo", beta=2.0, simpo_gamma=0.8, label_smoothing=0.1),
    "orpo": preference.Options("orpo", beta=0.25),
    "rpo": preference.Options("sigmoid", beta=0.1, sft_weight=0.5),
}


def _fixed_logps(seed=0):
  """Per-token reply log-probs [2B, T-1] (zero outside the reply) and the reply mask."""
  rng = np.random.default_rng(seed)
  mask = np.zeros((2 * B, T - 1))
  for row in range(2 * B):
    start = rng.integers(1, 4)
    mask[row, start:start + rng.integers(1, T - 1 - start)] = 1
  per_token = np.where(mask > 0, -rng.gamma(1.0, 0.6, size=mask.shape) * 0.2, 0.0)
  ref = per_token.sum(1).reshape(2, B).T + rng.normal(0, 0.5, size=(B, 2))
  return per_token, mask, ref


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_losses_equal_trl_on_fixed_log_probs(name):
  opt = OPTIONS[name]
  per_token, mask, ref = _fixed_logps()
  expected = float(trl_loss(opt, torch.tensor(per_token), torch.tensor(mask), torch.tensor(ref)))
  sums, counts = per_token.sum(1).reshape(2, B).T, mask.sum(1).reshape(2, B).T
  nll = -sums[:, 0] / counts[:, 0]
  loss, chosen_reward, rejected_reward = preference.pair_losses(
      opt, jnp.asarray(sums, jnp.float32), jnp.asarray(counts, jnp.float32),
      jnp.asarray(ref, jnp.float32), jnp.asarray(nll, jnp.float32))
  assert float(loss.mean()) == pytest.approx(expected, abs=1e-6, rel=1e-6)
  if opt.loss in preference.REFERENCE_FREE:
    np.testing.assert_allclose(chosen_reward, opt.beta * sums[:, 0] / counts[:, 0], rtol=1e-6)
  else:
    np.testing.assert_allclose(rejected_reward, opt.beta * (sums[:, 1] - ref[:, 1]), rtol=1e-5,
                               atol=1e-6)


def test_orpo_stays_finite_near_certain_replies():
  """log(1 - p) at p ~ 1 (mean log-prob ~ 0): TRL's log1mexp, and ours, stay finite."""
  from trl.experimental.orpo.orpo_trainer import log1mexp  # pylint: disable=g-import-not-at-top
  x = jnp.asarray([-1e-7, -1e-3, -0.69, -0.7, -30.0])
  expected = log1mexp(torch.tensor(np.asarray(x, np.float64))).numpy()
  assert np.isfinite(expected).all()
  np.testing.assert_allclose(preference.log1mexp(x), expected, rtol=1e-5)


# --- gradients through a tiny Llama -----------------------------------------------------------


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
  """Policy and reference (two random tiny Llamas) in ftjax and in transformers (float64)."""
  import transformers  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ftjax.models import registry  # pylint: disable=g-import-not-at-top
  from tiny_assets import make_tiny_llama  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("pref_llamas")
  dirs = make_tiny_llama(root / "policy", seed=0), make_tiny_llama(root / "reference", seed=1)
  ours = [registry.build_model(d, task="causal_lm", rngs=nnx.Rngs(0))[0] for d in dirs]
  theirs = [transformers.AutoModelForCausalLM.from_pretrained(str(d)).double() for d in dirs]
  return ours, theirs


def _pair_batch(vocab, seed=0):
  """A [B, 2, T] preference batch of random tokens: prompt, then a reply of random length."""
  from ftjax.data import packing  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  rows = []
  for _ in range(2 * B):
    n = int(rng.integers(5, T + 1))
    mask = np.zeros(n, np.int32)
    mask[int(rng.integers(2, n - 1)):] = 1
    rows.append([(rng.integers(3, vocab, size=n).astype(np.int32), mask)])
  flat = packing.collate_rows(rows, length=T, pad_id=0)
  batch = {k: v.reshape(B, 2, T) for k, v in flat.items()}
  batch["weights"] = np.ones(B, np.float32)
  return batch


def _torch_per_token(model, batch):
  """The HF model's reply-token log-probs [2B, T-1], chosen rows first (TRL's layout)."""
  order = lambda x: torch.tensor(np.concatenate([x[:, 0], x[:, 1]]))
  ids, attn = order(batch["input_ids"]).long(), order(batch["attention_mask"]).long()
  logits = model(input_ids=ids, attention_mask=attn).logits
  logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
  mask = order(batch["loss_mask"])[:, :-1].double()
  return torch.where(mask > 0, logp, torch.zeros_like(logp)), mask


def _hf_name(path: str) -> str:
  for ours in (".kernel", ".embedding", ".scale", ".bias"):
    if path.endswith(ours):
      return path[:-len(ours)] + (".bias" if ours == ".bias" else ".weight")
  raise AssertionError(path)


# Reference-based, per-token (IPO) and reference-free with the NLL term (ORPO).
@pytest.mark.parametrize("name", ["sigmoid", "ipo", "orpo"])
def test_gradients_through_a_tiny_llama_equal_torch_autograd(llamas, name):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from ftjax.weights import safetensors_io  # pylint: disable=g-import-not-at-top
  (policy, reference), (hf, hf_ref) = llamas
  opt = OPTIONS[name]
  batch = _pair_batch(policy.config.vocab_size)
  objective = preference.Preference(opt)

  graphdef, params = nnx.split(policy)
  @jax.jit
  def loss_and_grads(p, batch):
    def loss_of(p):
      model = nnx.merge(graphdef, p)
      return objective.train_loss(model, batch, None,
                                  reference=reference if objective.uses_reference else None)[0]
    return jax.value_and_grad(loss_of)(p)
  loss, grads = loss_and_grads(params, jax.tree.map(jnp.asarray, batch))

  hf.zero_grad()
  per_token, mask = _torch_per_token(hf, batch)
  with torch.no_grad():
    ref_per_token, _ = _torch_per_token(hf_ref, batch)
  torch_loss = trl_loss(opt, per_token, mask, ref_per_token.sum(1).reshape(2, B).T)
  torch_loss.backward()
  assert float(loss) == pytest.approx(torch_loss.item(), abs=1e-5)

  hf_grads = {n: p.grad.numpy() for n, p in hf.named_parameters()}
  ours = safetensors_io.param_vars(nnx.merge(graphdef, grads))
  for path, var in ours.items():
    expected = hf_grads[_hf_name(path)]
    np.testing.assert_allclose(np.asarray(var[...]), expected.T if path.endswith(".kernel")
                               else expected, atol=1e-5, rtol=1e-4, err_msg=path)
  assert len(ours) == len(hf_grads)  # every torch parameter (the tied head included)
