"""`maestro doctor`, `maestro logs`, `maestro prune` (placeholder until the operations work lands)."""
