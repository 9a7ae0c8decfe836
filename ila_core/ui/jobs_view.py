"""How training jobs look on the page: the live job card, the history table, the header status line.

All inputs are store rows (dicts), so a page refresh or a second browser shows the same thing: job state
lives in SQLite, not in the page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .labelling import as_text

__all__ = ["HISTORY_HEADERS", "history_rows", "job_card_html", "job_fraction", "short_duration"]

HISTORY_HEADERS = ["Job", "Status", "By", "Started", "Duration", "Result"]
_PHASES = {"prepare": "preparing data", "embed": "embedding images with the frozen backbone",
           "probe": "fitting the probe", "cache": "caching frozen features", "head": "fitting the head (LP-FT)",
           "train": "training adapters", "eval": "evaluating on holdout"}  # fmt: skip


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def short_duration(seconds: float | None) -> str:
    """``"1 min 05 s"`` / ``"42 s"``; empty for None."""
    if seconds is None:
        return ""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, sec = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def job_fraction(job: dict[str, Any]) -> float:
    """Progress in [0, 1] from the job's progress fields (cache filling counts as the first 10 %)."""
    if job["status"] in ("succeeded",):
        return 1.0
    p = job.get("progress") or {}
    phase = p.get("phase")
    if phase == "cache" and p.get("total"):
        return 0.1 * min(1.0, float(p.get("done", 0)) / float(p["total"]))
    if phase == "train" and p.get("total_steps"):
        return 0.1 + 0.85 * min(1.0, float(p.get("step", 0)) / float(p["total_steps"]))
    if phase == "eval":
        return 0.97
    return 0.0


def job_card_html(job: dict[str, Any] | None, now: datetime | None = None) -> str:
    """The live card of the newest job (or a hint when there is none)."""
    if job is None:
        return '<div class="ila-card"><b>No training job yet.</b> Label some images, then press Retrain.</div>'
    now = now or datetime.now(UTC)
    p = job.get("progress") or {}
    status = job["status"]
    title = f"Job #{job['id']} · <span class='ila-pill ila-pill-{status}'>{status}</span>"
    lines: list[str] = []
    if status == "queued":
        lines.append("Waiting for the worker to pick it up.")
    elif status == "running":
        phase = _PHASES.get(p.get("phase"), p.get("phase") or "starting")
        bits = [phase]
        if p.get("phase") == "train":
            if p.get("epoch") is not None:
                bits.append(f"epoch {p['epoch']}")
            if p.get("step") is not None and p.get("total_steps"):
                bits.append(f"step {p['step']}/{p['total_steps']}")
            if p.get("loss") is not None:
                bits.append(f"loss {float(p['loss']):.3f}")
            if p.get("eta_s") is not None:
                bits.append(f"about {short_duration(float(p['eta_s']))} left")
        elif p.get("phase") in ("cache", "embed") and p.get("total_steps"):
            bits.append(f"{p.get('step', 0)}/{p['total_steps']} images")
        lines.append(" · ".join(bits))
        if job.get("cancel_requested"):
            lines.append("Cancel requested; stopping after the current batch.")
    else:
        message = job.get("message") or status
        for warning in p.get("warnings") or []:  # shown below as notes, not twice
            message = message.replace(f"; {warning}", "")
        lines.append(as_text(message))
    started, finished = _when(job.get("started_at")), _when(job.get("finished_at"))
    if started is not None:
        end = finished or now
        line = f"Running time {short_duration((end - started).total_seconds())}"
        if job.get("snapshot_event_id") is not None:
            line += f" · data snapshot up to label event {job['snapshot_event_id']}"
        lines.append(line)
    if p.get("train_images") is not None:
        lines.append(f"{p['train_images']} training and {p.get('holdout_images', 0)} holdout images, "
                     f"{p.get('classes', '?')} cultivars")  # fmt: skip
    pct = round(100 * job_fraction(job))
    bar = f'<div class="ila-bar" role="progressbar" aria-valuenow="{pct}"><span style="width:{pct}%"></span></div>'
    body = "".join(f"<div>{line}</div>" for line in lines)
    if p.get("warnings") and status in ("running", "succeeded"):
        notes = "".join(f'<div class="ila-note ila-note-warn">{as_text(w[:1].upper() + w[1:])}.</div>'
                        for w in p["warnings"])  # fmt: skip
        body += f'<div class="ila-weak"><b>Why this model may be weak</b>{notes}</div>'

    show_bar = status in ("queued", "running", "succeeded")
    head = f'<div class="ila-card-title">{title}</div>'
    return f'<div class="ila-card" id="ila-job-card">{head}{bar if show_bar else ""}{body}</div>'


def history_rows(jobs: list[dict[str, Any]]) -> list[list[Any]]:
    """One table row per job, newest first."""
    rows = []
    for job in jobs:
        started, finished = _when(job.get("started_at")), _when(job.get("finished_at"))
        duration = short_duration((finished - started).total_seconds()) if started and finished else ""
        when = started.strftime("%Y-%m-%d %H:%M") if started else ""
        result = job.get("message") or ("" if job["status"] in ("queued", "running") else job["status"])
        rows.append([job["id"], job["status"], job.get("user") or "", when, duration, result])
    return rows
