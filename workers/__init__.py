"""Process entry points: broker set-up, settings, the CLI, local servers and metrics."""
