"""Running roadie: `serve` (server, deployments, workers), the warm worker and its zygote, the health and metrics
server and the container health check. The entry-point layer: it may import everything below it."""
