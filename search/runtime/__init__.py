"""The driver's runtime: input checks before anything starts, the search's lock and what it wrote,
signals, masked credentials and the user-error type."""
