"""The active-learning coordinator: durable state of pools, frames, scores per model version,
cycles, labeling tasks with leases, annotations, model versions and budget (docs/design.md,
"Services and data flow", "Storage").

Request path: servicer.py (proto in/out) -> coordinator.py (the core, no gRPC) -> store/ (SQL).
"""
