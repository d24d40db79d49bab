"""The application layer: what composes the services for a person at a terminal. The `segxal`
entry point (cli.py), the services loop and `segxal up` (loop.py over stack.py), Label Studio as
the loop's oracle (label_studio_oracle.py) and fleet submission to Kubernetes (fleet_job.py).
Imports point down only: app -> clients -> services' client APIs -> core (tests/test_layers.py)."""
