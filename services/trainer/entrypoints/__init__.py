"""How the trainer service is reached: gRPC, Kafka subscriptions, and ``main``."""
