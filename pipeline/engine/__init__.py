"""The engine: the pass API and registry, the pass context, and the manager that plans, caches, runs and
checks a chain of steps. The whole run, which uses every stage, lives above it in pipeline.run."""
