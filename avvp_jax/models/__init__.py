"""Models: HAN (MMIL_Net) and its building blocks."""

from avvp_jax.models.han import HAN
from avvp_jax.models.han import Dropout
from avvp_jax.models.han import HybridAttentionLayer
from avvp_jax.models.han import MultiHeadAttention
from avvp_jax.models.han import count_params
from avvp_jax.models.han import mmil_pool
