"""How the serving service is reached: gRPC, Kafka subscriptions, the alias watcher, the
release loader and the live quality reporter (background threads), and ``main``."""
