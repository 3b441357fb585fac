"""``sambench perf``: step times, orchestration at scale, the GPU summary."""
