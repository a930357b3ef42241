"""Developer tooling: contract code generation and a local single-node Kafka broker."""
