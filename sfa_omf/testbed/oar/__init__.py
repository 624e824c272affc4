"""OAR-managed testbeds: a typed client for OAR's REST API (client.py), which the OAR backend is built on."""
