"""Wire formats: per-run encoders that turn events into the bytes a client reads."""
