"""Composed selection: which frames to label, from scores, embeddings and predicted classes, with the
reasons for each pick. One path for the coordinator, the fleet and the benchmark."""
from segxal.selection.greedy import Pick, PoolFeatures, select
from segxal.selection.spec import DEFAULT_SELECTION, SelectionSpec

__all__ = ["DEFAULT_SELECTION", "Pick", "PoolFeatures", "SelectionSpec", "select"]
