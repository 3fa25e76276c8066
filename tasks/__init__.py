"""The work: plain typed functions grouped by domain, each with a thin Prefect @task beside it."""
