"""One module per way of writing time slots in a request: ol leases, SFA leases, Allocate options."""
