"""Peer cost models: the published systems' own analytical models, run beside hssim."""
