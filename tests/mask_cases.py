"""Mask builder calls shared by the torch and JAX mask tests: (builder name, positional args, keyword args)."""
BUILDERS = [
    ("causal_mask", (300, 700), {}),
    ("sliding_window_mask", (700, 300, 100), {"lookahead": 37}),
    ("sink_mask", (300, 300, 130), {"global_queries": True}),
    ("union_mask", (1000, 1000), {"window": 256, "sink": 4}),
]
