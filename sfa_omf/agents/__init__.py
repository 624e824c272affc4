"""Node agents: nodes that join the testbed by themselves (docs/node-agents.md).

``service.py`` is the server's side (sans-IO: JSON-like dicts in, dicts out), ``node.py`` the agent that runs on a
node (``sfa-omf agent``), ``host.py`` what the agent does to its host (Unix accounts and authorized_keys).
"""
