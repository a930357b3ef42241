"""How the dataset service is reached: gRPC, Kafka subscriptions, and ``main``."""
