"""The API's routes, one module per area: reads (plan, GPU, metrics, health), agents, apply, events."""
