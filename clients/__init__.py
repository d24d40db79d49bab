"""Labeling clients over the coordinator API: the shared lease library (labeling), the machine
oracle, the simulated human, and the Label Studio bridge for people (label_studio)."""
