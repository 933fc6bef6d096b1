"""avvp-jax: MA and HAN for weakly-supervised audio-visual video parsing, in JAX/Flax."""
