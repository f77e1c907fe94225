"""One module per process kind: listener, worker, writer (and tracker).

Each actor reads the node configuration, opens its sockets, and loops: receive, ask the core
(``node``), send. Run one with ``nodectl run <actor>``.
"""
