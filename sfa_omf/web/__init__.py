"""The web calendar (Gantt pages, node pages) and the iCal feeds, served under /calendar by the aggregate's server.

Sans-IO: ``WebCalendar.handle`` takes a plain request (path, query, the caller's TLS chain) and returns a plain
response; server/web.py is the Twisted side. It reads the calendar through its timeline records only.
"""
