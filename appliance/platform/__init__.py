"""The container platform's rendered files: k3s (air-gapped, with GPU nodes) and Harbor.

Pure functions from the plan to the files the roles write, so every file is checked here
without the binaries, which cannot be fetched on the build machines (see README, "Container
platform: what waits for the real binaries")."""
