"""Storage: crash-safe files (:mod:`~catapults.storage.atomic`), run directories
(:mod:`~catapults.storage.rundir`) and checkpoint files (:mod:`~catapults.storage.checkpoint`).
Imports nothing of the toolkit but its errors."""
