"""The built-in passes, one module each; importing a module registers its pass."""
