"""The version lifecycle of a run: its scratch folder, what it reports, and (tasks.py) the catalogue's transitions as
Prefect tasks."""
