"""Auth: projects and their API keys; every request acts for the project of its key."""
