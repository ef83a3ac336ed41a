"""Read models, projector, time travel and audit."""
