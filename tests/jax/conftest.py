"""JAX test set-up. On a GPU machine torch shares the card with JAX in the same pytest process, so JAX must not
preallocate most of its memory; the variable is read when JAX's GPU backend starts, after collection."""
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
