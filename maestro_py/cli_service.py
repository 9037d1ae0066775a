"""`maestro service …` (placeholder until the operations work lands)."""
