"""Security of the web app: login required, admin-only actions refused inside handlers, secure defaults.

The app is launched with a users list (one admin, one plain user) and called over raw HTTP, the way an
attacker or a script would, not only through the browser (RELIABILITY catalogue API-05..07, API-12, API-13).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from ui_support import fn_index, launched, raw_queue_call, small_options

from ila_core.config import AppConfig
from ila_core.ui import Studio, launch_settings
from ila_core.ui.auth import Users, load_users
from ila_core.ui.errors import scrub, user_message

USERS = "# lab accounts\nada:correct-horse-1:admin\nbob:battery-staple-2\n"
ADMIN, USER = ("ada", "correct-horse-1"), ("bob", "battery-staple-2")
NAMED = ["predict", "classify", "classify_batch", "correct", "confirm", "unsure", "undo", "label_history", "cultivars",
         "queue", "import_files", "import_path", "import_status", "export", "train", "cancel", "job", "versions",
         "promote", "rollback"]  # fmt: skip


@pytest.fixture(scope="module")
def import_root(tmp_path_factory):
    """The one folder admins may import from."""
    return tmp_path_factory.mktemp("incoming")


@pytest.fixture(scope="module")
def secured(tmp_path_factory, import_root):
    """A launched app with login (no worker, no demo set: refusals must happen before any work)."""
    data_dir = tmp_path_factory.mktemp("secured")
    options = small_options(start_worker=False, seed_demo=False, import_roots=(import_root,))
    with launched(data_dir, options, users=Users.parse(USERS)) as app:
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
     ("ui_retrain", [2, 1.0, 0.05, 16, 1]), ("ui_promote", [None, None]), ("ui_rollback", []),
     ("ui_import_path", ["/etc", "Detect automatically", "Keep the layout's split"]), ("ui_add_cultivar", ["Zinnia"]),
     ("import_path", ["/etc", "auto", None])],
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


# -- uploads: image files (and zips of images where offered) only, through /predict and the UI's events ----------


def _png_file(path, seed: int):
    from ila_core.data.synthetic import SyntheticConfig, generate

    next(generate(SyntheticConfig(num_cultivars=3, image_size=96, seed=seed), 1, start_index=seed))[1].save(path)
    return path


def _written(studio) -> tuple[int, int, list[str]]:
    with studio.store() as store:
        return store.count_images(), store.last_event_id(), store.cultivars()


def _file_data(path) -> dict:
    return {"path": str(path), "orig_name": Path(str(path)).name, "meta": {"_type": "gradio.FileData"}}


def _uploaded(url: str, http: httpx.Client, path) -> str:
    """Upload like the browser does; returns the server-side path in Gradio's cache."""
    r = http.post(url.rstrip("/") + "/gradio_api/upload", files={"files": (path.name, path.read_bytes())})
    assert r.status_code == 200, r.text
    return r.json()[0]


@pytest.fixture
def server_image(secured):
    """An image that exists on the server, outside any upload (the checkout's screenshot in the report)."""
    return Path(__file__).resolve().parents[1] / "assets" / "screenshots" / "dinov2" / "classify.png"


@pytest.mark.parametrize("exists", [True, False], ids=["existing-path", "missing-path"])
def test_csv_of_server_paths_sent_to_predict_is_refused(secured, tmp_path, server_image, exists):
    """API-16: a CSV naming an absolute server image, sent to /predict by a user, is "not an image"; nothing written."""
    _, url, studio = secured
    target = server_image if exists else server_image.with_name("no-such-file.png")
    assert target.is_file() == exists
    csv = tmp_path / "list.csv"
    csv.write_text(f"path,label\n{target},Amber-01\n")
    before = _written(studio)
    client = Client(url, auth=USER, verbose=False)
    try:
        with pytest.raises(AppError) as err:
            client.predict(handle_file(str(csv)), api_name="/predict")
    finally:
        client.close()
    assert "list.csv: not an image" in str(err.value) and str(target) not in str(err.value)
    assert _written(studio) == before


def test_folder_of_the_upload_cache_sent_to_predict_imports_nothing(secured, tmp_path):
    """API-17: FileData naming a folder of Gradio's cache (everyone's uploads) is refused; no image or cultivar."""
    _, url, studio = secured
    with _login(url, USER) as http:
        cached = [_uploaded(url, http, _png_file(tmp_path / f"other-{n}.png", 40 + n)) for n in range(3)]
        before = _written(studio)
        index = fn_index(url, "predict", http)
        answers = [raw_queue_call(url, index, [_file_data(folder)], http)
                   for folder in (Path(cached[0]).parent, studio.temp_dir)]  # fmt: skip
    assert all(a["success"] is False for a in answers) and _written(studio) == before
    assert all("Send one image file" not in a["output"]["error"] for a in answers)
    assert all(str(studio.temp_dir) not in a["output"]["error"] for a in answers)


def test_zip_sent_to_predict_is_refused_and_writes_nothing(secured, tmp_path):
    """API-18: a zip of labelled images sent to /predict is refused every time, before any entry is read."""
    import zipfile

    _, url, studio = secured
    archive = tmp_path / "leaves.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for n, name in enumerate(["Amber-01/a.png", "Birch/b.png", "c.png"]):
            zf.write(_png_file(tmp_path / f"z{n}.png", 60 + n), name)
    before = _written(studio)
    client = Client(url, auth=USER, verbose=False)
    try:
        for _ in range(5):
            with pytest.raises(AppError, match="zip archives are not accepted here"):
                client.predict(handle_file(str(archive)), api_name="/predict")
    finally:
        client.close()
    assert _written(studio) == before


@pytest.mark.parametrize("event", ["ui_upload", "ui_import_upload"])
@pytest.mark.parametrize("what", ["list.csv", "list.png", "folder"])
def test_ui_uploads_refuse_csvs_and_folders(secured, tmp_path, server_image, event, what):
    """The Classify and Data tabs' upload events refuse a CSV of server paths (also named .png) and a cache folder."""
    _, url, studio = secured
    with _login(url, USER) as http:
        if what != "folder":
            csv = tmp_path / what
            csv.write_text(f"path,label\n{server_image},Amber-01\n")
            payload = _file_data(_uploaded(url, http, csv))
        else:
            payload = _file_data(Path(_uploaded(url, http, _png_file(tmp_path / "p.png", 70))).parent)
        before = _written(studio)
        state = {"ids": [], "sel": None}
        data = [[payload], state] if event == "ui_upload" else [[payload], "Keep the layout's split"]
        msg = raw_queue_call(url, fn_index(url, event, http), data, http)
    error = msg["output"]["error"]
    assert msg["success"] is False and _written(studio) == before and str(server_image) not in error
    expected = {"list.csv": "Invalid file type", "list.png": "list.png: not an image", "folder": "File refused"}
    assert expected[what] in error


def test_zip_uploaded_by_a_user_stores_images_but_creates_no_cultivars(secured, tmp_path):
    """A user's zip on the Data tab stores its images; folder names do not become cultivars, and the report says so."""
    import zipfile

    _, url, studio = secured
    archive = tmp_path / "mine.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for n, name in enumerate(["Qx7-folder/a.png", "Zk2-folder/b.png"]):
            zf.write(_png_file(tmp_path / f"u{n}.png", 80 + n), name)
    images, events, cultivars = _written(studio)
    with _login(url, USER) as http:
        data = [[_file_data(_uploaded(url, http, archive))], "Keep the layout's split"]
        msg = raw_queue_call(url, fn_index(url, "ui_import_upload", http), data, http)
    report, summary = msg["output"]["data"][:2]
    assert msg["success"] and "2 imported" in summary and "New cultivars" not in summary
    assert all("label not saved: unknown cultivar" in row[2] for row in report["data"])
    assert _written(studio) == (images + 2, events, cultivars)


def test_file_outside_the_cache_gets_a_generic_refusal(secured, tmp_path):
    """A FileData path outside the upload cache (the users file, the database) is refused without echoing paths."""
    _, url, studio = secured
    users_file = tmp_path / "users.txt"
    users_file.write_text(USERS)
    with _login(url, USER) as http:
        index = fn_index(url, "predict", http)
        answers = [raw_queue_call(url, index, [_file_data(p)], http) for p in (users_file, studio.db_path)]
    for answer in answers:
        error = answer["output"]["error"]
        assert answer["success"] is False and error.startswith("File refused")
        assert "/" + "tmp" not in error and str(studio.data_dir) not in error and "blocked_paths" not in error


def test_server_path_outside_the_import_roots_is_refused_with_the_roots(secured, tmp_path, import_root):
    """An admin's server-path import outside the roots is refused and names the roots; inside them it imports."""
    _, url, studio = secured
    outside = tmp_path / "elsewhere" / "Amber-01"
    outside.mkdir(parents=True)
    _png_file(outside / "a.png", 90)
    inside = import_root / "batch" / "Amber-01"
    inside.mkdir(parents=True)
    _png_file(inside / "b.png", 91)
    args = ["Detect automatically", "Keep the layout's split"]
    before = _written(studio)
    with _login(url, ADMIN) as http:
        index = fn_index(url, "ui_import_path", http)
        refused = raw_queue_call(url, index, [str(outside.parent)] + args, http)
        assert _written(studio) == before
        accepted = raw_queue_call(url, index, [str(import_root / "batch")] + args, http)
    assert refused["success"] is False and f"import roots ({import_root})" in refused["output"]["error"]
    assert accepted["success"] and "1 imported" in accepted["output"]["data"][1]


# -- logins: throttled per user name and per address -----------------------------------------------------------


def test_wrong_passwords_lock_the_user_out_even_for_the_right_one(secured):
    """API-11: after the free failures, the right password is refused (HTTP 429, clear message) until the wait ends."""
    _, url, studio = secured
    login = url.rstrip("/") + "/login"
    try:
        with httpx.Client() as http:
            codes = [http.post(login, data={"username": "bob", "password": f"guess-{n}"}).status_code
                     for n in range(studio.logins.policy.free_failures + 1)]  # fmt: skip
            right = http.post(login, data={"username": "bob", "password": USER[1]})
        assert codes == [400] * len(codes) and right.status_code == 429
        assert "Too many failed logins" in right.json()["detail"] and int(right.headers["retry-after"]) >= 1
    finally:
        studio.logins.clear()
    with httpx.Client() as http:
        assert http.post(login, data={"username": "bob", "password": USER[1]}).status_code == 200


def test_stale_job_of_a_killed_worker_does_not_block_retrain(secured):
    """A job left 'running' by a killed standalone worker is marked lost by the app itself; Retrain is accepted."""
    import subprocess
    import sys

    _, url, studio = secured
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with studio.store() as store:
        stale = store.enqueue_job("train", {}, user="ada")
        store.claim_job("otherhost:1:abc", dead.pid)
    client = Client(url, auth=ADMIN, verbose=False)
    try:
        out = client.predict(api_name="/train")
    finally:
        client.close()
        with studio.store() as store:
            lost = store.job(stale)
            for job in store.jobs():
                if job["status"] in ("queued", "running"):
                    store.request_cancel(job["id"])
                    store.finish_job(job["id"], "cancelled", message="test cleanup")
    assert out["job_id"] != stale and lost["status"] == "failed" and "lost" in lost["message"]
