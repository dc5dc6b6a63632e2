"""Feedback data: typed records, on-disk formats, readers/writers, conversions, validation and
the feedback store."""
