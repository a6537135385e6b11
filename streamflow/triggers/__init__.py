"""The HTTP front (gateway, console, health endpoints) and the triggers: webhooks and the
leader-elected ones (poll, schedule, file, S3, AMQP, streams). Above the runtime."""
