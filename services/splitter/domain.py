"""The splitter service's domain: plain dataclasses and rules, no grpc, kafka, torch or SQL."""
