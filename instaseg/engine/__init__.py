"""instaseg.engine: train, evaluate and measure any model that keeps the detector contract.

The model (or a factory building it) comes from the caller, usually ``instaseg.hub``; nothing here
imports ``instaseg.detectors``. Checkpoint files (atomic save, safe load, resume state) live here too.
"""
