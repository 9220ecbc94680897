"""Helpers for the tests that drive the real Pulumi CLI (built by scripts/pulumi-cli.sh)."""
