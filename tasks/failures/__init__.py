"""Jobs that failed for good: the dead-letter records, their notifications and their re-queueing."""
