"""Every use case on, both ways, on the real broker, registry and emulators: the world
(``stack``), the people who change it (``people``), what the emulators recorded
(``ledger``), and the checks of the echo and SIGKILL tests and of ``drills/echo_run.py``."""
