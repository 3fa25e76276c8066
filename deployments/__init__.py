"""How roadie is deployed on Prefect: the topology (pools, queues, limits, automations) and the Docker variant."""
