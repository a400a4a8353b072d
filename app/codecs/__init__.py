"""Binary codecs for the per-completion arrays stored in the results table."""
