-- The app database is POSTGRES_DB (roadie); the Prefect server keeps its own next to it.
CREATE DATABASE prefect;
