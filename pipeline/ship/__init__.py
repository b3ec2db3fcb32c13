"""Shipping: the rule that picks a step, the bundle, and the Triton config."""
