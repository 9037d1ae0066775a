"""maestro_py: run scheduled AI work (cadences) safely from a filesystem tick bus."""

__version__ = "0.1.0"
