"""Security of the web app: login required, admin-only actions refused inside handlers, secure defaults.

The app is launched with a users list (one admin, one plain user) and called over raw HTTP, the way an
attacker or a script would, not only through the browser (RELIABILITY catalogue API-05..07, API-12, API-13).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest
from gradio_client import Client
from ui_support import fn_index, launched, raw_queue_call, small_options

from ila_core.config import AppConfig
from ila_core.ui import Studio, launch_settings
from ila_core.ui.auth import Users, load_users
from ila_core.ui.errors import scrub, user_message

USERS = "# lab accounts\nada:correct-horse-1:admin\nbob:battery-staple-2\n"
ADMIN, USER = ("ada", "correct-horse-1"), ("bob", "battery-staple-2")
NAMED = ["predict", "correct", "confirm", "unsure", "undo", "label_history", "cultivars", "train", "cancel", "job",
         "versions", "promote", "rollback"]  # fmt: skip


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A launched app with login (no worker, no demo set: refusals must happen before any work)."""
    data_dir = tmp_path_factory.mktemp("secured")
    with launched(data_dir, small_options(start_worker=False, seed_demo=False), users=Users.parse(USERS)) as app:
        yield app


@contextlib.contextmanager
def _login(url: str, who: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client() as http:
        r = http.post(url.rstrip("/") + "/login", data={"username": who[0], "password": who[1]})
        assert r.status_code == 200, r.text
        yield http


def test_users_file_gives_roles():
    """Entries parse into users; only ':admin' entries are admins; comments and blanks are skipped."""
    users = Users.parse(USERS)
    assert [n for n, _ in users.passwords] == ["ada", "bob"] and users.is_admin("ada") and not users.is_admin("bob")


@pytest.mark.parametrize("line", ["nocolon", ":password123", "bad name:password123", "eve:short", "a:b:c:admin"])
def test_malformed_users_entry_is_refused_without_echoing_it(line):
    """A bad users line raises ValueError naming its number, never the password."""
    with pytest.raises(ValueError, match="entry 1") as err:
        Users.parse(line)
    assert "password123" not in str(err.value)


def test_password_check_is_exact():
    """Only the right password of a known user passes."""
    users = Users.parse(USERS)
    assert users.check(*ADMIN) and users.check(*USER)
    assert not users.check("ada", "battery-staple-2") and not users.check("mallory", "correct-horse-1")


def test_users_come_from_the_environment_when_no_file_is_given():
    """ILA_USERS holds the same format, ';'-separated."""
    users = load_users(None, env={"ILA_USERS": "ada:correct-horse-1:admin;bob:battery-staple-2"})
    assert users is not None and users.is_admin("ada") and load_users(None, env={}) is None


def test_binding_another_address_needs_users(tmp_path):
    """A non-loopback host without --auth is refused by the config and by the launch settings."""
    with pytest.raises(ValueError, match="--auth"):
        AppConfig(data_dir=tmp_path, host="0.0.0.0")
    config = AppConfig(data_dir=tmp_path, host="0.0.0.0", auth_file=tmp_path / "users.txt")
    with pytest.raises(ValueError, match="--auth"):
        launch_settings(config, Studio(config, small_options(start_worker=False, seed_demo=False), users=None))


def test_upload_needs_login(secured):
    """POST /gradio_api/upload without a session is 401; with a login it is accepted (API-05)."""
    url = secured[1].rstrip("/")
    files = {"files": ("leaf.png", b"\x89PNG\r\n\x1a\n", "image/png")}
    assert httpx.post(f"{url}/gradio_api/upload", files=files).status_code == 401
    with _login(secured[1], USER) as http:
        assert http.post(f"{url}/gradio_api/upload", files=files).status_code == 200


@pytest.mark.parametrize("name", NAMED)
def test_named_endpoint_without_login_is_refused(secured, name):
    """Every named API endpoint refuses a caller without a session (API-06)."""
    url = secured[1].rstrip("/")
    with _login(secured[1], ADMIN) as http:
        index = fn_index(url, name, http)
    with httpx.Client() as anonymous:
        r = anonymous.post(f"{url}/gradio_api/queue/join", json={"data": [], "fn_index": index, "session_hash": "x"})
        call = anonymous.post(f"{url}/gradio_api/call/{name}", json={"data": []})
    assert r.status_code == 401 and call.status_code == 401


@pytest.mark.parametrize(
    ("api_name", "data"),
    [("train", [None, None]), ("cancel", []), ("promote", [1]), ("rollback", [None]),
     ("ui_retrain", [2, 1.0, 0.05, 16, 1]), ("ui_promote", [None]), ("ui_rollback", []),
     ("ui_import_path", ["/etc", "Detect automatically", "Keep the layout's split"]), ("ui_add_cultivar", ["Zinnia"])],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_admin_actions_by_a_plain_user_are_refused_in_the_handler(secured, api_name, data):
    """Through the raw queue route, a logged-in non-admin gets a refusal and nothing changes (API-07)."""
    _, url, studio = secured
    with studio.store() as store:
        before = (len(store.jobs()), len(store.version_history()), store.count_images(), store.cultivars())
    with _login(url, USER) as http:
        msg = raw_queue_call(url, fn_index(url, api_name, http), data, http)
    with studio.store() as store:
        after = (len(store.jobs()), len(store.version_history()), store.count_images(), store.cultivars())
    assert msg["success"] is False and "Only admins may" in msg["output"]["error"]
    assert after == before


def test_admin_may_queue_training(secured):
    """The same /train call from an admin queues a job (the refusal above is about the role)."""
    _, url, studio = secured
    client = Client(url, auth=ADMIN, verbose=False)
    try:
        out = client.predict(api_name="/train")
    finally:
        client.close()
        with studio.store() as store:
            for job in store.jobs():
                if job["status"] == "queued":
                    store.request_cancel(job["id"])
    assert out["job_id"] >= 1 and "queued" in out["message"]


def test_plain_user_may_still_label(secured):
    """Role checks do not block ordinary work: a non-admin can read cultivars and jobs."""
    client = Client(secured[1], auth=USER, verbose=False)
    try:
        assert client.predict(api_name="/cultivars") == [] and isinstance(client.predict(api_name="/job"), dict)
    finally:
        client.close()


def test_user_messages_hide_paths_and_escape_html():
    """Messages shown in the browser lose file paths and show markup as text."""
    text = scrub("cannot read /srv/data/ila.db or C:\\lab\\ila.db: <b>bad</b>")
    assert "/srv/data" not in text and "C:\\lab" not in text and "<b>" not in text and "&lt;b&gt;" in text


def test_unexpected_errors_are_not_shown_verbatim():
    """Only the app's own error family keeps its message; anything else becomes a logged reference."""
    assert user_message(KeyError("secret")) is None and user_message(OSError("/srv/x")) is None
    assert user_message(ValueError("label is empty")) == "label is empty"


def _app_module():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("ila_app", Path(__file__).resolve().parents[1] / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_app_entry_refuses_a_public_address_without_users(tmp_path, capsys):
    """``python app.py --host 0.0.0.0`` without --auth exits with code 2 and says why, before serving."""
    assert _app_module().main(["--host", "0.0.0.0", "--data-dir", str(tmp_path)]) == 2
    assert "--auth" in capsys.readouterr().err and not (tmp_path / "ila.db").exists()


def test_app_entry_defaults_are_loopback_and_the_shipped_backbone():
    """The flags default to 127.0.0.1:7860, ./data and the in-app worker."""
    args = _app_module().build_parser().parse_args([])
    assert (args.host, args.port, str(args.data_dir), args.no_worker, args.weights) == (
        "127.0.0.1",
        7860,
        "data",
        False,
        "default",
    )
