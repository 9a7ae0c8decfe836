"""Numbered schema migrations for the label store (sqlite-utils 4 built-in ``Migrations``).

Schema changes are new numbered functions (``0004_...``, in number order), never edits of an applied one:
``_sqlite_migrations`` records which names ran, so an edited migration would silently not run on
existing databases.

Design notes:

* ``label_events`` is append-only (triggers refuse UPDATE and DELETE). Each event stores the event
  it replaced (``replaces_event_id``) and, for an undo, the event it brings back
  (``restores_event_id``), so the label state of an image is a stack and any past state is one join.
* ``current_labels`` is derived and kept up to date by an AFTER INSERT trigger on ``label_events``,
  so it changes in the same transaction as the event, whichever code inserts it.
* ``predictions`` and ``version_events`` are append-only too; ``scores`` (0003) is the derived, indexed
  summary of the newest prediction per (version, image) that the Review queues read.
* Partial unique indexes make "one active model version" and "one queued/running job" database
  rules, not just application checks.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations
from sqlite_utils.utils import sqlite3

from .connection import immediate

__all__ = ["migrations", "apply_migrations"]

migrations = Migrations("ila_store")

_INITIAL = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE CHECK (length(sha256) = 64),
    rel_path TEXT NOT NULL,
    width INTEGER NOT NULL CHECK (width > 0),
    height INTEGER NOT NULL CHECK (height > 0),
    format TEXT NOT NULL,
    original_name TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    split TEXT CHECK (split IN ('train', 'holdout')),
    created_at TEXT NOT NULL,
    uploaded_by TEXT
);
CREATE INDEX images_split ON images (split);

CREATE TABLE cultivars (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

CREATE TABLE label_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_event_id TEXT NOT NULL UNIQUE,
    image_id INTEGER NOT NULL REFERENCES images (id),
    kind TEXT NOT NULL CHECK (kind IN ('label', 'unsure', 'between', 'undo')),
    cultivar_id INTEGER REFERENCES cultivars (id),
    alt_cultivar_id INTEGER REFERENCES cultivars (id),
    replaces_event_id INTEGER REFERENCES label_events (id),
    restores_event_id INTEGER REFERENCES label_events (id),
    user TEXT,
    source TEXT NOT NULL CHECK (source IN ('expert', 'import', 'model-accepted', 'bulk')),
    note TEXT,
    created_at TEXT NOT NULL,
    CHECK (kind != 'label' OR cultivar_id IS NOT NULL),
    CHECK (kind != 'between' OR (cultivar_id IS NOT NULL AND alt_cultivar_id IS NOT NULL)),
    CHECK (kind = 'between' OR alt_cultivar_id IS NULL),
    CHECK (kind != 'undo' OR (cultivar_id IS NULL AND replaces_event_id IS NOT NULL))
);
CREATE INDEX label_events_image ON label_events (image_id, id);

CREATE TRIGGER label_events_no_update BEFORE UPDATE ON label_events
BEGIN
    SELECT RAISE(ABORT, 'label_events is append-only');
END;
CREATE TRIGGER label_events_no_delete BEFORE DELETE ON label_events
BEGIN
    SELECT RAISE(ABORT, 'label_events is append-only');
END;

CREATE TABLE current_labels (
    image_id INTEGER PRIMARY KEY REFERENCES images (id),
    event_id INTEGER NOT NULL REFERENCES label_events (id),
    head_event_id INTEGER NOT NULL REFERENCES label_events (id)
);
CREATE INDEX current_labels_event ON current_labels (event_id);

CREATE TRIGGER label_events_apply AFTER INSERT ON label_events WHEN NEW.kind != 'undo'
BEGIN
    INSERT INTO current_labels (image_id, event_id, head_event_id) VALUES (NEW.image_id, NEW.id, NEW.id)
    ON CONFLICT (image_id) DO UPDATE SET event_id = excluded.event_id, head_event_id = excluded.head_event_id;
END;
CREATE TRIGGER label_events_apply_undo AFTER INSERT ON label_events WHEN NEW.kind = 'undo'
BEGIN
    DELETE FROM current_labels WHERE image_id = NEW.image_id;
    INSERT INTO current_labels (image_id, event_id, head_event_id)
    SELECT NEW.image_id, NEW.restores_event_id, NEW.id WHERE NEW.restores_event_id IS NOT NULL;
END;

CREATE TABLE model_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent_id INTEGER REFERENCES model_versions (id),
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
    manifest TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    snapshot_event_id INTEGER NOT NULL,
    job_id INTEGER REFERENCES jobs (id),
    status TEXT NOT NULL DEFAULT 'candidate' CHECK (status IN ('candidate', 'active', 'retired')),
    created_at TEXT NOT NULL
);
CREATE UNIQUE INDEX model_versions_one_active ON model_versions (status) WHERE status = 'active';

CREATE TABLE version_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version_id INTEGER NOT NULL REFERENCES model_versions (id),
    previous_version_id INTEGER REFERENCES model_versions (id),
    action TEXT NOT NULL CHECK (action IN ('promote', 'rollback')),
    user TEXT,
    created_at TEXT NOT NULL
);
CREATE TRIGGER version_events_no_update BEFORE UPDATE ON version_events
BEGIN
    SELECT RAISE(ABORT, 'version_events is append-only');
END;
CREATE TRIGGER version_events_no_delete BEFORE DELETE ON version_events
BEGIN
    SELECT RAISE(ABORT, 'version_events is append-only');
END;

CREATE TABLE predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id INTEGER NOT NULL REFERENCES images (id),
    model_version_id INTEGER NOT NULL REFERENCES model_versions (id),
    topk TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX predictions_image ON predictions (image_id, model_version_id, id);
CREATE TRIGGER predictions_no_update BEFORE UPDATE ON predictions
BEGIN
    SELECT RAISE(ABORT, 'predictions are never overwritten');
END;
CREATE TRIGGER predictions_no_delete BEFORE DELETE ON predictions
BEGIN
    SELECT RAISE(ABORT, 'predictions are never overwritten');
END;

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    params TEXT NOT NULL DEFAULT '{}',
    user TEXT,
    snapshot_event_id INTEGER NOT NULL,
    progress TEXT NOT NULL DEFAULT '{}',
    message TEXT,
    heartbeat_at TEXT,
    worker_id TEXT,
    pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    result_version_id INTEGER REFERENCES model_versions (id),
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
-- One queued-or-running job at a time: an index on a constant, restricted to the live states.
CREATE UNIQUE INDEX jobs_one_live ON jobs ((1)) WHERE status IN ('queued', 'running');

CREATE TABLE job_metrics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    step INTEGER NOT NULL,
    epoch INTEGER,
    "values" TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX job_metrics_job ON job_metrics (job_id, id);
"""


@migrations(name="0001_initial")
def m0001_initial(db: Database) -> None:
    """Create every table, index and trigger of the first release."""
    _run_script(db, _INITIAL)


@migrations(name="0002_version_kind")
def m0002_version_kind(db: Database) -> None:
    """Model versions say how they were made (``probe``: closed-form head on frozen embeddings; ``ila``: adapters
    trained by SGD; ``baseline``: another PETL method) and why a kept version was not served."""
    _run_script(db, """
ALTER TABLE model_versions ADD COLUMN kind TEXT NOT NULL DEFAULT 'ila' CHECK (kind IN ('probe', 'ila', 'baseline'));
ALTER TABLE model_versions ADD COLUMN note TEXT;
""")


@migrations(name="0003_scores_and_stored_sha256")
def m0003_scores_and_stored_sha256(db: Database) -> None:
    """Queues in SQL and duplicate checks through an index.

    * ``scores``: one row per (model version, image), the newest prediction's top-1, its probability, the
      top-1/top-2 margin and the image's similarity to its nearest confirmed image (NULL until known), so every
      Review sort is one indexed, paged query. Derived from ``predictions`` (append-only) and rebuilt from it
      here; unlike the log, a row is replaced when the image is scored again.
    * ``images.stored_sha256``: the hash of the stored (re-encoded) copy, copied out of ``metadata`` and
      indexed, so re-importing an export is recognised without reading the whole table.
    """
    _run_script(db, """
ALTER TABLE images ADD COLUMN stored_sha256 TEXT CHECK (stored_sha256 IS NULL OR length(stored_sha256) = 64);
UPDATE images SET stored_sha256 = json_extract(metadata, '$.stored_sha256')
WHERE json_valid(metadata) AND length(json_extract(metadata, '$.stored_sha256')) = 64;
CREATE INDEX images_stored_sha256 ON images (stored_sha256) WHERE stored_sha256 IS NOT NULL;

CREATE TABLE scores (
    model_version_id INTEGER NOT NULL REFERENCES model_versions (id),
    image_id INTEGER NOT NULL REFERENCES images (id),
    prediction_id INTEGER NOT NULL REFERENCES predictions (id),
    top1 TEXT NOT NULL,
    top1_prob REAL NOT NULL,
    margin REAL NOT NULL,
    nearest_similarity REAL,
    PRIMARY KEY (model_version_id, image_id)
) WITHOUT ROWID;
CREATE INDEX scores_margin ON scores (model_version_id, margin, image_id);
CREATE INDEX scores_confidence ON scores (model_version_id, top1_prob DESC, image_id);
CREATE INDEX scores_unlike ON scores (model_version_id, nearest_similarity, image_id)
    WHERE nearest_similarity IS NOT NULL;

INSERT INTO scores (model_version_id, image_id, prediction_id, top1, top1_prob, margin)
SELECT p.model_version_id, p.image_id, p.id, json_extract(p.topk, '$[0].label'), json_extract(p.topk, '$[0].prob'),
       json_extract(p.topk, '$[0].prob') - COALESCE(json_extract(p.topk, '$[1].prob'), 0.0)
FROM predictions p
WHERE p.id = (SELECT MAX(q.id) FROM predictions q
              WHERE q.image_id = p.image_id AND q.model_version_id = p.model_version_id);
""")


@migrations(name="0004_image_archive")
def m0004_image_archive(db: Database) -> None:
    """Archiving as events (0003 is taken by the prediction queues): ``image_events`` is append-only
    (archive, restore, delete = file removed for good) and ``archived_images`` follows it by triggers."""
    _run_script(db, """
CREATE TABLE image_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_event_id TEXT NOT NULL UNIQUE,
    image_id INTEGER NOT NULL REFERENCES images (id),
    action TEXT NOT NULL CHECK (action IN ('archive', 'restore', 'delete')),
    user TEXT,
    note TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX image_events_image ON image_events (image_id, id);
CREATE TRIGGER image_events_no_update BEFORE UPDATE ON image_events
BEGIN
    SELECT RAISE(ABORT, 'image_events is append-only');
END;
CREATE TRIGGER image_events_no_delete BEFORE DELETE ON image_events
BEGIN
    SELECT RAISE(ABORT, 'image_events is append-only');
END;
CREATE TABLE archived_images (
    image_id INTEGER PRIMARY KEY REFERENCES images (id),
    event_id INTEGER NOT NULL REFERENCES image_events (id),
    deleted INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1))
);
CREATE TRIGGER image_events_apply AFTER INSERT ON image_events WHEN NEW.action != 'restore'
BEGIN
    INSERT INTO archived_images (image_id, event_id, deleted) VALUES (NEW.image_id, NEW.id, NEW.action = 'delete')
    ON CONFLICT (image_id) DO UPDATE SET event_id = excluded.event_id, deleted = MAX(deleted, excluded.deleted);
END;
CREATE TRIGGER image_events_apply_restore AFTER INSERT ON image_events WHEN NEW.action = 'restore'
BEGIN
    DELETE FROM archived_images WHERE image_id = NEW.image_id AND deleted = 0;
END;
""")

def _run_script(db: Database, script: str) -> None:
    # Statement by statement inside the migration's transaction: sqlite3's executescript() would
    # COMMIT first (sqlite-utils avoids that too, but re-joins the script once per character).
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in migration: {statement[:80]!r}")


def apply_migrations(db: Database) -> list[str]:
    """Apply pending migrations under the write lock, so two processes opening a new file do not race.

    Returns:
        Names of the migrations applied by this call (empty when the schema is current).
    """
    if not migrations.pending(db):
        return []
    with immediate(db):
        # Re-check under the lock: another process may have migrated while we waited.
        names = [m.name for m in migrations.pending(db)]
        migrations.apply(db)
    return names
