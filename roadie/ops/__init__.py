"""Operating roadie on Prefect: the REST client, dead letters, health and metrics.

Nothing here imports Prefect at module level: the health server and the REST client only need httpx.
"""
