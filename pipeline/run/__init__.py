"""The run layer, on top of every stage: prepare a recipe, run it top to bottom (reference, chain,
verify, benchmark, choose, bundle, report), keep what passed, and replay an unchanged run."""
