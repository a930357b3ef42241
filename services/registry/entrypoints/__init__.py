"""How the registry service is reached: gRPC, Kafka subscriptions, and ``main``."""
