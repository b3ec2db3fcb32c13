"""Benchmarks: interleaved rounds over long-lived workers, timing, noise, fingerprints, generation."""
