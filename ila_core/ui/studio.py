"""The running studio: the shared resources every tab needs, passed explicitly into ``build_app``.

One :class:`Studio` per app process holds the data directory, the users list, the serving model runtime and
the in-app training worker. It holds no database connection: handlers open a :class:`LabelStore` per call
(:meth:`Studio.store`), because Gradio runs them on many threads. Per-session values live in ``gr.State``.

On a fresh data directory :meth:`Studio.open` seeds the synthetic demo cultivars in a background thread and
queues an initial training job, so the first page shows progress instead of a blank model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import gradio as gr

from ..config import AppConfig
from ..store import DB_NAME, JobBusy, LabelStore
from .auth import Users
from .errors import UserFacing
from .import_jobs import ImportJobs
from .media import ThumbnailCache
from .options import StudioOptions
from .serving import ModelRuntime
from .throttle import LoginThrottle

__all__ = ["DB_NAME", "GRADIO_TMP", "LOCAL_USER", "StartupStatus", "Studio"]

_logger = logging.getLogger(__name__)

GRADIO_TMP = "gradio-tmp"  # Gradio's upload/cache folder inside the data dir (GRADIO_TEMP_DIR)
LOCAL_USER = "local"  # who acts when the app runs without login (loopback only)
_SMALL_MODEL_LOCATIONS = {"test_vit": (1, 3)}  # 6-block test model; 12-block ViTs use the method default (3, 7)
_SERVED_DIRS = ("images", "adapters", "weights", "cache", "exports")  # never served over HTTP
STALE_JOB_S = 120.0  # a running job without a heartbeat for this long lost its worker (the worker's own limit)
_SWEEP_EVERY_S = 5.0  # the header poll and Retrain look for lost jobs at most this often


@dataclass(frozen=True)
class StartupStatus:
    """What the studio is doing before it is ready (shown in the header)."""

    phase: str  # "ready", "seeding", "failed"
    done: int = 0
    total: int = 0
    message: str = ""


class Studio:
    """Data directory, users, model runtime and worker of one app process.

    Args:
        config: server settings and the data directory.
        options: model, worker and demo settings.
        users: the login list; None = single local user (loopback only, that user is an admin).
    """

    def __init__(self, config: AppConfig, options: StudioOptions, users: Users | None) -> None:
        self.config, self.options, self.users = config, options, users
        self.data_dir = Path(config.data_dir).resolve()
        self.db_path = self.data_dir / DB_NAME
        self.temp_dir = self.data_dir / GRADIO_TMP
        self.models = ModelRuntime(self.data_dir, self.db_path, options)
        self.thumbs = ThumbnailCache(self.data_dir)
        self.worker: Any = None
        self.imports = ImportJobs()
        self.logins = LoginThrottle()
        self._swept_at = 0.0
        self._status = StartupStatus("ready")
        self._lock = threading.Lock()
        self._seeder: threading.Thread | None = None
        self._warmer: threading.Thread | None = None  # warms the explanation path after a model switch
        self.scorer: Any = None  # BackgroundScorer: every stored image scored by the served version
        self.embeddings: Any = None  # the frozen-embedding store, shared by the worker and the background embedder
        self.embedder: Any = None  # BackgroundEmbedder: every stored image embedded once, after import
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(cls, config: AppConfig, options: StudioOptions | None = None, *, users: Users | None = None) -> Studio:
        """Create folders and the store, load the active model, start the worker, seed a fresh directory."""
        studio = cls(config, options or StudioOptions(), users)
        studio.data_dir.mkdir(parents=True, exist_ok=True)
        studio.temp_dir.mkdir(exist_ok=True)
        with LabelStore.open(studio.db_path) as store:  # full quick_check once at start; migrations applied
            fresh = store.count_images() == 0 and not store.jobs(limit=1)
        studio.follow_model()
        studio._start_embedding()
        studio._start_scoring()
        if studio.options.start_worker:
            studio._start_worker()
        if fresh and studio.options.seed_demo:
            studio._status = StartupStatus("seeding", message="Writing the synthetic demo cultivars")
            studio._seeder = threading.Thread(target=studio._seed, name="ila-seed", daemon=True)
            studio._seeder.start()
        return studio

    def close(self) -> None:
        """Stop the worker (a running job ends 'cancelled') and wait for the seeding thread."""
        if self._closed:
            return
        self._closed = True
        for thread in (self._seeder, self._warmer):
            if thread is not None:
                thread.join(timeout=60)
        if self.scorer is not None:
            self.scorer.stop(timeout=30)
        if self.embedder is not None:
            self.embedder.stop(timeout=30)
        if self.worker is not None:
            self.worker.stop(timeout=30)
        self.imports.wait(timeout=30)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_embedding(self) -> None:
        from ..embeddings import BackgroundEmbedder, EmbeddingStore, embeddings_dir

        self.embeddings = EmbeddingStore(embeddings_dir(self.data_dir))
        self.models.embeddings = self.embeddings  # one store: exemplars, unlikeness, the probe, the indexer
        if self.options.background_embedding:
            # A running job embeds what its probe needs itself: two threads embedding the same images would only
            # halve each other's speed on a small machine, so the background pass waits meanwhile.
            busy = lambda: self.worker is not None and self.worker.busy  # noqa: E731
            self.embedder = BackgroundEmbedder(self.db_path, self.data_dir, self.options.backbone, self.embeddings,
                                               busy=busy)  # fmt: skip
            self.embedder.start()

    def _start_scoring(self) -> None:
        from ..serving.scorer import BackgroundScorer

        warming = lambda: self._warmer is not None and self._warmer.is_alive()  # noqa: E731
        # Below interactive work: users' predictions, the warm-up after a switch and training jobs go first.
        training = lambda: self.worker is not None and self.worker.busy  # noqa: E731
        busy = lambda: self.models.interactive_busy or warming() or training()  # noqa: E731
        self.scorer = BackgroundScorer(self.db_path, self.data_dir, predict=self.models.predict_background,
                                       version=lambda: self.models.version_id,
                                       similarities=self.models.nearest_similarities, busy=busy,
                                       generation=self._confirmed_generation)  # fmt: skip
        if self.options.background_scoring:
            self.scorer.start()

    def _confirmed_generation(self) -> tuple[int, int]:
        """Changes whenever the confirmed images may have (a label event, an image added or archived)."""
        with self.store() as store:
            return store.last_event_id(), store.count_images()

    def _start_worker(self) -> None:
        from ..jobs.worker import Worker

        self.worker = Worker(
            self.data_dir,
            store_path=self.db_path,
            mode="thread",
            share_from=self.models.share_from,
            on_promoted=lambda _version_id: self.follow_model(),
            embeddings=self.embeddings,
        )
        self.worker.start()

    def _seed(self) -> None:
        from ..data.demo import seed_demo_set
        from ..data.synthetic import SyntheticConfig

        spec = self.options.demo
        try:
            synth = SyntheticConfig(num_cultivars=spec.num_cultivars, image_size=spec.image_size, seed=spec.seed)
            summary = seed_demo_set(
                self.data_dir,
                synth,
                train_per_class=spec.train_per_class,
                holdout_per_class=spec.holdout_per_class,
                pool_per_class=spec.pool_per_class,
                on_progress=self._seed_progress,
            )
            _logger.info("demo set ready: %s", summary)
            with self.store() as store:
                job_id = self.enqueue_training(store, user="setup")
            _logger.info("queued initial training job %d", job_id)
            self._status = StartupStatus("ready", message="Demo set imported; initial training queued")
        except JobBusy:
            self._status = StartupStatus("ready")
        except Exception:  # the app keeps serving; the header says what failed
            _logger.exception("seeding the demo set failed")
            self._status = StartupStatus("failed", message="Seeding the demo set failed; see the server log")

    def _seed_progress(self, done: int, total: int) -> None:
        self._status = StartupStatus("seeding", done, total, "Importing the synthetic demo cultivars")

    def follow_model(self, *, changed: bool = False) -> bool:
        """Serve the store's active version; after a switch, warm explanations and score in the background.

        Args:
            changed: the caller already swapped the served model (promote/rollback through the predictor).

        Returns:
            True if the served version changed.
        """
        changed = self.models.sync() or changed
        if changed and not self._closed:
            with self._lock:
                if self._warmer is None or not self._warmer.is_alive():
                    self._warmer = threading.Thread(target=self._warm_after_switch, name="ila-warm", daemon=True)
                    self._warmer.start()
            if self.scorer is not None:
                self.scorer.wake()  # the new version scores every image, after the warm-up
        return changed

    def _warm_after_switch(self) -> None:
        """Warm the explanation path, so a user's first heatmap does not wait for the whole build."""
        try:
            self.models.warm_explainer()
        except Exception:  # a convenience: the first explanation builds it otherwise
            _logger.exception("warming the explanation path failed")

    @property
    def status(self) -> StartupStatus:
        """Startup progress (seeding) or "ready"."""
        return self._status

    # -- per-request helpers ------------------------------------------------------------------

    @contextmanager
    def store(self) -> Iterator[LabelStore]:
        """A store connection for this call only (opened and closed on the calling thread)."""
        with LabelStore.open(self.db_path, quick_check=False) as store:
            yield store

    def username(self, request: gr.Request | None) -> str:
        """Who is calling: the login name, or ``local`` when the app runs without login."""
        name = getattr(request, "username", None) if request is not None else None
        if self.users is None:
            return name or LOCAL_USER
        if not name:
            raise UserFacing("Please log in.")
        return str(name)

    def is_admin(self, request: gr.Request | None) -> bool:
        """True for admins, and for the single local user of an app without login."""
        if self.users is None:
            return True
        name = getattr(request, "username", None) if request is not None else None
        return self.users.is_admin(name)

    def require_admin(self, request: gr.Request | None, action: str) -> str:
        """The caller's name if they may ``action`` (train, promote, roll back); else a refusal.

        Raises:
            UserFacing: not an admin.
        """
        user = self.username(request)
        if not self.is_admin(request):
            _logger.warning("refused %s for non-admin user %r", action, user)
            raise UserFacing(f"Only admins may {action}. Ask an admin of this studio.")
        return user

    # -- training -----------------------------------------------------------------------------

    def job_params(self, **train_overrides: Any) -> dict[str, Any]:
        """Parameters of a retrain job with this studio's backbone, method and recipe (plus overrides)."""
        from ..jobs.worker import job_params

        overrides = dict(self.options.train_overrides) | {k: v for k, v in train_overrides.items() if v is not None}
        locations = self.options.ds_locations or _SMALL_MODEL_LOCATIONS.get(self.options.backbone.name.split(".")[0])
        method = {"ds_locations": list(locations)} if locations else None
        return job_params(
            variant=self.options.variant,
            preset_name=self.options.train_preset,
            backbone=self.options.backbone,
            method_overrides=method,
            **overrides,
        )

    def enqueue_training(self, store: LabelStore, *, user: str, **train_overrides: Any) -> int:
        """Queue a retrain; raises JobBusy when one is queued or running."""
        from ..jobs.worker import JOB_KIND

        return store.enqueue_job(JOB_KIND, self.job_params(**train_overrides), user=user)

    def sweep_lost_jobs(self, *, force: bool = False) -> list[int]:
        """Mark running jobs whose worker died (pid gone) or went silent (stale heartbeat) as failed.

        The app does this itself, so a killed standalone worker (``python -m ila_core worker``) does not leave
        its job "running", and Retrain refused, until some worker starts again. Rate-limited unless ``force``.
        """
        now = time.monotonic()
        if not force and now - self._swept_at < _SWEEP_EVERY_S:
            return []
        self._swept_at = now
        with self.store() as store:
            lost = store.mark_lost_jobs(stale_after_s=STALE_JOB_S)
        if lost:
            _logger.warning("marked jobs %s failed: their worker died or stopped sending heartbeats", lost)
        return lost

    # -- launch settings ----------------------------------------------------------------------

    def blocked_paths(self) -> list[str]:
        """Absolute paths Gradio must never serve: the database files and every data folder but its own cache."""
        paths = [self.db_path, self.db_path.with_name(DB_NAME + "-wal"), self.db_path.with_name(DB_NAME + "-shm")]
        paths += [self.data_dir / name for name in _SERVED_DIRS]
        if self.config.auth_file is not None:
            paths.append(Path(self.config.auth_file).resolve())
        return [str(p) for p in paths]
