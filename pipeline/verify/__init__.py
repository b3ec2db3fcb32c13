"""Verification: the eager reference, parity metrics and the gate, accuracy, greedy generation."""
