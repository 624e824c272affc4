"""Several sfa-omf processes on one database: worker processes sharing the listening ports, and the leadership that
runs the background tasks on exactly one of them."""
