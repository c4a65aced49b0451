"""Sigma schedules, the UniPC sampler, guidance and the section loop."""
