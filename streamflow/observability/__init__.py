"""What every layer reports through: metrics, tracing, logs, execution events and their
history (the execution store), and redaction of what is shown."""
