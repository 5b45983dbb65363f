"""Data generation and input pipelines: tracer, program sources, trajectories, tokenisation, packing, mixtures (grain)."""
