"""Records: the stored completions of a job, read page by page or exported as a stream."""
