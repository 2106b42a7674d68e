"""Adapters of the monitors to other training frameworks; each imports its framework only when
it is imported itself.

- :mod:`catapults.integrations.lightning`  :class:`CatapultsCallback` for a
  ``lightning.pytorch.Trainer`` (``pip install lightning``)
"""
