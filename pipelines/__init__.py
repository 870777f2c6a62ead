"""Plain-Python stages: read -> one pure call -> write. `pipelines.io` is the only module that knows paths."""
