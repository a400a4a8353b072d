"""Jobs: prompt sets submitted for a teacher, their items and their progress."""
