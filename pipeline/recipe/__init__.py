"""Recipes: the strict schema, loading YAML with --set overrides, and the chain of steps."""
