"""Passes that lower precision: fp16, dynamic and static int8, and smoothing before int8."""
