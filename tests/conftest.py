"""Test-wide settings: nothing a test runs writes the user's ~/.cache.

Set on import, before any test module imports JAX or matplotlib, and inherited by the
processes that tests start (launch/main.py would otherwise keep its XLA cache in
~/.cache/avvp_jax/xla).
"""

import os
import tempfile

_CACHE = tempfile.mkdtemp(prefix='avvp_jax_test_cache_')
os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(_CACHE, 'xla')
os.environ['MPLCONFIGDIR'] = os.path.join(_CACHE, 'matplotlib')
