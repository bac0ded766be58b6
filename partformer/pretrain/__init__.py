"""Self-supervised pretraining of the feature-map encoder (tools/pretrain.py, docs/PRETRAINING.md)."""
