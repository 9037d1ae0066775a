"""`maestro serve`: the HTTP face of one agent root, in a process of its own.

The bus is the only interface with the daemon: triggers become ticks through `Bus.enqueue`, and everything
shown is read from the files the daemon writes (`consumer.json`, the ledger, `circuit-open.json`, the bus
folders, `state/metrics.prom`). Nothing here spawns a sub-session or moves a tick once it is queued.
"""
