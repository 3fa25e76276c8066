"""Analytics batch jobs: the daily rollup of plays and engagement."""
