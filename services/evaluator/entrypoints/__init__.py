"""How the evaluator service is reached: gRPC, Kafka subscriptions, and ``main``."""
