"""Benchmarks: interleaved rounds over long-lived worker processes, noise, fingerprints, generation, and the
typed results they hand on (BenchResult, Ratio)."""
