"""The OMF 6 backend (``[sfa_aggregate] type = omf``): sfa-omf in the place of an OMF 6 testbed's omf_sfa broker.

- inventory.py: the omf_sfa-compatible REST inventory (``/resources/nodes``, ``/resources/leases``,
  ``/resources/accounts``) as plain data, read from the calendar; leases written through the calendar.
- rest.py: that inventory over HTTPS (Twisted), mounted at ``/resources`` on the aggregate's server.
- frcp.py: an FRCP client over AMQP (RabbitMQ), messages signed as JWT RS256.
- backend.py: the TestbedBackend.
"""
