"""Recipes: the strict schema, and loading YAML with --set overrides (the chain of steps is engine.chain)."""
