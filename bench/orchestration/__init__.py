"""Orchestration: suite files, their cache, executors, launching processes, the job function."""
