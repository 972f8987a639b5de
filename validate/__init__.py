"""Validation: hssim's predictions checked against measurements and against peer cost models."""
