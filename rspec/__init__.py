"""RSpec library: request/advertisement/manifest dialects with time slots (GENI v3, ol leases, SFA leases).

It knows nothing of the calendar or the server; it turns XML into plain data and plain data into XML. The dialects
arrive with the RSpec issue; this package holds the place in the product's layout.
"""
