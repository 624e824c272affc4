"""Notifications: lease events noticed from the calendar, written to the outbox, delivered by e-mail and webhooks.

Nothing here runs inside an AM call: the notifier is a background task that compares the calendar with the clock,
so a slow or down mail server can never delay or fail a booking.
"""
