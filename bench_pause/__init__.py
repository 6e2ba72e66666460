"""bench-pause: how fast and how cleanly vLLM pauses and resumes generation."""
