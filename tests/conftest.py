"""Test-session wiring: fixtures live in ``tests/fixtures`` and are loaded as plugins."""

import os

# Servers refuse to start without TLS and auth unless this opt-in says otherwise (services'
# default is `enforce`). The suite's services, in-process and as child processes, run without
# them; tests/integration/test_grpc_security.py and test_authz_matrix.py build secured servers
# explicitly.
os.environ.setdefault("TUNELINE_AUTH_MODE", "insecure")

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.events",
    "tests.fixtures.s3",
    "tests.fixtures.postgresql",
]
