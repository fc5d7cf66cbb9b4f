"""Pure torch math of the method: projection, parameter budget, token weights, losses, concept
matching on strings and offsets.

Nothing in this package may import ray, deepspeed or transformers (a test checks it), so the
math can be read, tested and reused without the distributed stack.
"""
