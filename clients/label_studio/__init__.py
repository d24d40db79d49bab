"""The Label Studio bridge: people label in Label Studio, annotations come back to the coordinator
(bridge), over Label Studio's REST API (api) with its brush RLE in our code (brush)."""
