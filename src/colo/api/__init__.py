"""colo's HTTP API (FastAPI), served by ``colo up`` over the orchestrator and by ``colo serve`` over a plan.

Modules (FastAPI and uvicorn are imported only by the modules that need them, never by ``colo --help``):

- ``source``: the :class:`~colo.api.source.ApiSource` Protocol: what the API needs from the orchestrator;
- ``app``: ``create_app(source, *, token, open_reads=True) -> FastAPI`` and the error mapping;
- ``routes/``: reads (``/mps/allocation``, ``/gpu/info``, ``/metrics``, ``/healthz``), agents, apply, events;
- ``gpu_view``, ``metrics``: the ``/gpu/info`` document with agents joined in; the Prometheus collector;
- ``auth``: the token (state dir file, mode 0600, or ``$COLO_API_TOKEN``) and the bearer check;
- ``readonly``: the source behind ``colo serve``; ``server``: binding, uvicorn, ``ApiThread``;
- ``client``: ``ApiClient``, how the CLI talks to a running orchestrator.

See docs/api.md.
"""
