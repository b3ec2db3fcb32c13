"""Repair against the gate: the options every reduced-precision pass shares, the search for nodes to keep in
float, and the localisation of harm.
"""
