"""Payout batch jobs: the monthly user-centric distribution."""
