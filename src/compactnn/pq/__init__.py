"""Product quantization (biresolution spectral PQ). Not implemented yet."""
