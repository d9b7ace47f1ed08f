"""The built-in filters, written on :mod:`wsgiproxy.filters` alone, as any filter
author would write one (docs/filters.md is their reference)."""
