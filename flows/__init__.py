"""Orchestration only: one module per job, each flow short."""
