"""The training job queue's worker side: job parameters, the runner of one job, the worker loop, torchrun.

Import submodules directly (``worker``, ``runner``, ``distributed`` pull in torch).
"""

from __future__ import annotations

from .params import JOB_KIND, enqueue_training, job_params, parse_job_params

__all__ = ["JOB_KIND", "enqueue_training", "job_params", "parse_job_params"]
