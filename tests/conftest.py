"""Test-session wiring: fixtures live in ``tests/fixtures`` and are loaded as plugins."""

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.events"]
