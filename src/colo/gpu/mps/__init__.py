"""CUDA MPS, one control daemon per GPU: ``root``/``daemon``/``fleet`` (life cycle), ``env`` (the one place the
``CUDA_MPS_*`` client variables are spelled), ``control`` (the one door to ``nvidia-cuda-mps-control``) with its
``fake`` beside it, ``replies`` (what the control program answers, parsed) and ``log`` (its log files, read)."""
