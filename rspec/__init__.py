"""RSpec library: request/advertisement/manifest dialects with time slots (GENI v3, ol leases, SFA leases).

It knows nothing of the calendar or the server; it turns XML into plain data and plain data into XML
(docs/rspec.md). The entry points:

- ``rspec.parse_request.parse_request(data, now=..., policy=..., allocate_options=...) -> Request``
- ``rspec.advertisement.write_advertisement(Advertisement, LeaseView) -> bytes`` and ``lease_view(list_leases)``
- ``rspec.manifest.write_manifest(Manifest, sfa_leases=False) -> bytes``
- ``rspec.validate.validate(data, kind=None) -> list[Problem]`` (what `sfa-omf rspec validate` runs)
- ``rspec.write_request.write_request(Request, Dialect)`` (what a client would send; for tests and tools)

The plain data is in ``rspec.model``; refusals are ``rspec.problems.RSpecError`` (BADARGS, or TOOBIG when
oversized) listing every ``Problem`` with its line, column, element and what was expected.
"""
