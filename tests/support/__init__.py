"""Helpers for integration tests: real processes, real broker, deadlines instead of sleeps."""
