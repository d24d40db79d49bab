"""Fleet-scale ranking of drive logs: the Indexed Job worker (worker.py) and its Job builder and watcher (job.py)."""
