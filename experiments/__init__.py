"""absl entry points and ml_collections configs, one per stage/ablation."""
