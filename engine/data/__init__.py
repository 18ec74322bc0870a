"""Data sets: the synthetic city, real-data ingest, and (later) windows, splits and normalisation."""
