"""Environment understanding: satellite tiles, text descriptions, CLIP embeddings (paper Sec. IV-A)."""
