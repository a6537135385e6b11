"""StreamFlow: a Kafka-native integration-flow engine."""

__version__ = "0.1.0"
