"""Exporters: turn chunks of stored completions into a streamed file format, one module per format."""
