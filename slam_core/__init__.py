"""slam_core: the Slamming recipe as a library (no Prefect here; flows/ and tasks/ orchestrate it)."""

__version__ = "0.1.0"
