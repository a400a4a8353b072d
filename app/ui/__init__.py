"""The web console under /ui: server-rendered pages over the jobs, records, datasets and teachers services."""
