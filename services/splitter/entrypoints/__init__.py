"""How the splitter service is reached: gRPC, Kafka subscriptions, and ``main``."""
