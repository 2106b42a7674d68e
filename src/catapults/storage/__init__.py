"""Storage: crash-safe files (:mod:`~catapults.storage.atomic`) and run directories
(:mod:`~catapults.storage.rundir`). Imports nothing of the toolkit but its errors."""
