"""tasks: thin Prefect tasks, each calling one slam_core function and returning paths and counts."""
