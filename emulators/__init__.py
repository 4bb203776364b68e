"""Local, faithful emulators of the external services frontforce talks to (test/dev only)."""
