"""``colo serve CONFIG`` (the API over a plan and the GPUs, no agents) and ``colo top`` (the live view)."""

from __future__ import annotations

from pathlib import Path

import typer

from colo.cli.common import console, err_console, print_json, safe


def serve_command(
    config: Path = typer.Argument(..., help="colo.yaml to plan and serve."),
    host: str | None = typer.Option(None, "--host", help="Address to listen on (default: api.host, 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", min=1, max=65535, help="Port (default: api.port, 8014)."),
    open_reads: bool | None = typer.Option(
        None, "--open-reads/--token-reads", help="GET routes without a token (default: on loopback only)."
    ),
    mps_root: Path | None = typer.Option(
        None, "--mps-root", help="Directory of colo's per-GPU MPS pipe dirs, to show their daemons."
    ),
    no_gpu: bool = typer.Option(False, "--no-gpu", help="Do not read NVML (serve the plan alone)."),
) -> None:
    """Serve the plan and GPU state read-only: /mps/allocation, /gpu/info, /agents, /metrics, /docs."""
    from colo.api.readonly import load_read_only
    from colo.api.server import binding_for, run_api
    from colo.files import state_dir

    source = load_read_only(config, use_nvml=not no_gpu, mps_root=mps_root)
    cfg = source.snapshot().config
    binding = binding_for(cfg.api, state_dir(cfg.state_dir), host=host, port=port, open_reads=open_reads)
    err_console.print(
        safe(f"colo serve: {binding.url} (read-only: plan and GPU state; API docs at {binding.url}/docs)"),
        highlight=False,
    )
    run_api(
        source,
        binding,
        warn=lambda msg: err_console.print(f"[bold yellow]warning:[/] {safe(msg)}", highlight=False),
    )


def top_command(
    once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
    url: str | None = typer.Option(None, "--url", help="Orchestrator API (default http://127.0.0.1:8014)."),
    interval: float = typer.Option(1.0, "--interval", min=0.1, max=60.0, help="Seconds between refreshes."),
    as_json: bool = typer.Option(False, "--json", help="With --once: the frame's data as JSON."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="Take the API address and state dir (token) from this colo.yaml."
    ),
) -> None:
    """A live view of GPUs, their MPS daemons and every agent's memory against its limit (like nvitop).

    `q` quits; the header's clock is the time of the last good poll; while the orchestrator is away the last
    data stays on screen with a "disconnected, retrying" line, and the view carries on when it returns.
    """
    from rich.live import Live

    from colo.api.client import ApiClient
    from colo.cli.views.top import TopLoop, render_frame, terminal_keys
    from colo.files import state_dir

    settings = None
    where = state_dir(None)
    if config is not None:
        from colo.spec import load_config

        cfg = load_config(config)
        settings, where = cfg.api, state_dir(cfg.state_dir)
    with ApiClient.from_state_dir(where, url=url, settings=settings) as client:
        if once or as_json:
            info, agents = client.gpu_info(), client.agents()
            if as_json:
                print_json({"gpu_info": info, "agents": agents})
            else:
                width = console.width if console.is_terminal else None
                console.print(render_frame(info, agents, url=client.base_url, width=width))
            return
        loop = TopLoop(lambda: (client.gpu_info(), client.agents()), url=client.base_url, interval_secs=interval,
                       wait_key=lambda secs: None)
        with terminal_keys() as wait_key, Live(console=console, screen=False, auto_refresh=False) as live:
            loop.wait_key = wait_key
            try:
                loop.run(lambda frame: live.update(frame, refresh=True), lambda: console.width)
            except KeyboardInterrupt:
                return


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``top``."""
    app.command("serve")(serve_command)
    app.command("top")(top_command)
