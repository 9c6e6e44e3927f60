"""The harness: configurations, the runner and its workers, the one launcher, records, timing."""
