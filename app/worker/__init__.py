"""Worker: claims queued items under a lease, sends them to teachers, stores what comes back."""
