"""The engine: the pass API, the manager that plans, caches and runs steps, the pass context, and the whole run
top to bottom.
"""
