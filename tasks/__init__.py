"""The work, by domain (media, versions, analytics, payouts): plain typed functions in plain modules, and in each
domain one tasks.py of thin Prefect @task wrappers named after the functions they run."""
