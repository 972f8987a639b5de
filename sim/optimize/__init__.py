"""Optimisers: each paper's parameter picked by simulation through the one cost model."""
