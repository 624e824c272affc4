"""What makes a booking real on the testbed: the backend interface (base.py), the embedded default (embedded.py),
and finding a backend by its configured name (registry.py)."""
