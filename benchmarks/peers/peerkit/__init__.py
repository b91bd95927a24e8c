"""Helpers for running peer CTR libraries (FuxiCTR, DeepCTR-Torch, torch-rechub) on untwine's datasets.

Runs inside benchmarks/peers/.venv, where untwine itself is not installed: nothing here imports untwine.
"""
