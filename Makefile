# The two commands of the README. Both run as root on a Debian 12 machine and set up what they
# need (Debian packages, dockerd, the venv, the air-gapped test-host image) on first use.
.PHONY: demo test

# Build the demo bundle, install it onto a local air-gapped systemd host, verify it, and show
# an audited chat completion through the gateway.
demo:
	tests/demo

# Lint, unit and integration tests, every molecule scenario.
test:
	tests/run
