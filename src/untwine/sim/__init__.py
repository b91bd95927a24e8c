"""Seeded ads-world simulator: latent users/ads, a serving policy, clicks, two delayed conversions,
behaviour histories and ground-truth probabilities, written as a ``dataset.yaml`` dataset.

Example::

    >>> from untwine.sim import SimConfig, write_dataset
    >>> yaml_path = write_dataset(SimConfig(n_impressions=50_000, n_users=1_000, n_ads=300), "data/sim")  # doctest: +SKIP
"""
from untwine.sim.simulate import SimLog, run, simulate, to_table
from untwine.sim.world import SimConfig, World, build_world
from untwine.sim.writer import dataset_schema, split_rows, write_dataset, write_log

__all__ = [
    "SimConfig",
    "World",
    "build_world",
    "SimLog",
    "run",
    "simulate",
    "to_table",
    "dataset_schema",
    "split_rows",
    "write_dataset",
    "write_log",
]
