"""The built-in agent's process exit codes: the one place they are spelled (the supervisor imports these).

- ``EXIT_OK`` 0: stopped by SIGTERM/SIGINT.
- ``EXIT_FAILED`` 1: any other failure (port in use, a model that cannot be built).
- ``EXIT_USAGE`` 2: a bad command line or colo.yaml.
- ``EXIT_OOM`` 3: loading or warming up ran the device out of memory (the MPS limit is too low for it).
- ``EXIT_CONTEXT_LOST`` 4: the agent's CUDA context became unusable while it ran (a sticky CUDA error such as a
  device-side assert or an illegal address, an MPS server that died or refused the client —
  ``cudaErrorMpsRpcFailure`` 806, ``cudaErrorMpsServerNotReady`` 807, 805 —, a lost device, a device that
  stopped answering). Nothing in the process can recover it: restart the agent at once, no backoff needed for
  the agent's own sake (the cause is outside it).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_OOM = 3
EXIT_CONTEXT_LOST = 4

__all__ = ["EXIT_CONTEXT_LOST", "EXIT_FAILED", "EXIT_OK", "EXIT_OOM", "EXIT_USAGE"]
