"""ftjax: fine-tune pretrained models with JAX, Flax NNX, Optax, Orbax, Grain and TFDS."""

__version__ = "0.1.0"
