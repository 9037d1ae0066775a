"""Operating an agent root: doctor, services, cron schedules, the log viewer and read-models."""
