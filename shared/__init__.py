"""Plumbing shared by every Tuneline service.

One place for what each service would otherwise write again: settings and logging, the gRPC
server (health, reflection, metrics, error mapping, graceful stop) and client channel, the
CloudEvents envelope, the Kafka publisher, the transactional outbox and its relay, the consumer
loop with dead-lettering, the metrics server, the SQL session factory and the artifact store.
Nothing here connects at import time.
"""
