"""Wiring of the video-language indexing and search system: config, schema, Ray graph, runner, search."""
