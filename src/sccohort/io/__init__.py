"""Readers and writers of count files and cohort objects."""
