"""Validation: measure, fit and compare. Imports `sim` and `hw`, never the reverse.

Micro-benchmarks (`microbench`) fit a hardware profile (`calibrate`); the simulator prices
the validation set with it (`hssim.sim.costs.profile`) and `hw` measures the same
schedules; `compare` and `report` give the error. `peers/` runs FlexGen's own LP cost model
and the papers' claims beside hssim.
"""
