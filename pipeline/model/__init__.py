"""Models: loading (hub id, folder, packaged, config with random weights, factory), the decoder wrapper with a
flat KV cache, and realistic inputs.
"""
