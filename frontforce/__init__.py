"""frontforce core: configuration, errors, serialization, Kafka plumbing and the CLI.

`sources/`, `streams/` and `sinks/` import from here (and from `schemas/`), never from
each other; see ../shared/DESIGN.md "Who may import whom".
"""

__version__ = "0.1.0"

