"""Fleet-scale ranking of drive logs: the Indexed Job worker (worker.py); the Job is built and watched by app/fleet_job.py."""
