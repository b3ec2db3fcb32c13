"""Repair against the gate: the options every reduced-precision pass shares, the budget and the search for
nodes to keep in float, the strategies that choose them, their builds, and the localisation of harm.
"""
