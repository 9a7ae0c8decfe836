"""The page header: product name and a status line (serving version, live job, demo seeding, who is logged in)."""

from __future__ import annotations

from typing import Any

from .jobs_view import job_fraction
from .labelling import as_text
from .studio import Studio

__all__ = ["header_html"]

_LEAF = (
    '<svg width="26" height="26" viewBox="0 0 24 24" aria-hidden="true"><path fill="currentColor" '
    'd="M20.5 3.5c-7.7 0-13.9 3.1-15.8 9.2-.6 1.9-.6 3.8-.1 5.4L2.8 20l1.4 1.4 2-2c1.5.5 3.4.5 5.3-.1 '
    "6.1-1.9 9.2-8.1 9.2-15.8zM8.6 17.3l6.9-6.9-1.4-1.4-6.9 6.9c-.2-1-.1-2.1.3-3.2C9 8.4 13.4 6 18.4 5.6 "
    '18 10.6 15.6 15 11.3 16.4c-1 .4-1.8.5-2.7.9z"/></svg>'
)


def _pill(text: str, kind: str = "neutral") -> str:
    return f'<span class="ila-pill ila-pill-{kind}">{text}</span>'


def header_html(studio: Studio, user: str | None = None, admin: bool = True) -> str:
    """Title and status pills; cheap enough to poll every few seconds."""
    pills: list[str] = []
    status = studio.status
    if status.phase == "seeding":
        done = f" {status.done}/{status.total}" if status.total else ""
        pills.append(_pill(f"Preparing demo data{done}", "running"))
    elif status.phase == "failed":
        pills.append(_pill(as_text(status.message), "failed"))
    version = studio.models.version_id
    job: dict[str, Any] | None = None
    with studio.store() as store:
        active = store.active_version()
        jobs = store.jobs(limit=1)
        job = jobs[0] if jobs else None
    if version is None:
        pills.append(_pill("No model served yet", "queued"))
    else:
        top1 = ((active or {}).get("metrics") or {}).get("top1") if active and active["id"] == version else None
        acc = f" · holdout top-1 {top1:.1%}" if top1 is not None else ""
        pills.append(_pill(f"Serving model v{version}{acc}", "succeeded"))
    if studio.models.problem:
        pills.append(_pill(as_text(studio.models.problem[:120]), "failed"))
    indexer = studio.embedder.status() if studio.embedder is not None else None
    if indexer is not None and indexer.running:
        pills.append(_pill(f"Embedding images {indexer.embedded}/{indexer.total}", "running"))
    scorer = studio.scorer.status() if studio.scorer is not None else None
    if scorer is not None and scorer.running and scorer.version_id == version:
        pills.append(_pill(f"Scoring images {scorer.scored}/{scorer.total} (v{scorer.version_id})", "running"))
    if job is not None and job["status"] in ("queued", "running"):
        pct = f" {job_fraction(job):.0%}" if job["status"] == "running" else ""
        pills.append(_pill(f"Training job #{job['id']} {job['status']}{pct}", "running"))
    if user:
        pills.append(_pill(f"{as_text(user)}{' · admin' if admin else ''}"))
    return (
        f'<div class="ila-header"><div class="ila-brand">{_LEAF}<span>ILA Studio</span>'
        f'<span class="ila-sub">ultra-fine-grained cultivar recognition</span></div>'
        f'<div class="ila-status">{"".join(pills)}</div></div>'
    )
