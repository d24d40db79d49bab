"""The coordinator's core by concept (pools and ingest, cycles and ranking, labeling), composed
into services.coordinator.coordinator.Coordinator."""
