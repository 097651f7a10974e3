"""The bench stage: the same engines verification uses, timed side by side.

- ``timing``: how engines take turns, and each engine's timing;
- ``machine``: what the figures were measured on, and what makes them noisy;
- ``benchmark``: ``bench_layer``, which exports a layer and times its engines.
"""

DEFAULT_BENCH_THREADS = 2
