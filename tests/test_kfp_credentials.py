"""Where ``tfpipes submit`` / ``schedule`` send the bearer token (issue 12): only to ``--host``,
never on a redirect, never in the clear to another machine unless asked, never a malformed one,
and the service-account token only when it is meant for the host. Servers are on 127.0.0.1;
a name that is not loopback resolves (in this process only) to one of them, and any other name
fails to resolve, so nothing can leave this machine even if a check is broken."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tfpipes_pipelines import kfp_transport

from tests.test_kfp_api import (
    RUN_ID,
    _compile,
    one_line_error,
    run_cli,
    send_healthy,
    submit,
)

pytestmark = [pytest.mark.kfp, pytest.mark.timeout(60)]

TOKEN = "sentinel-token-7f3a9c1e"
HEALTHZ = "/apis/v2beta1/healthz"


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    return _compile(tmp_path_factory.mktemp("pkg") / "pipeline.yaml")


class Recorder:
    """A server on 127.0.0.1 that records every request's path and headers. ``redirect``:
    None answers 200 everywhere; else ``(status, location, spare)``: every request is answered
    with that redirect, except the first ``spare`` health checks, which get 200."""

    def __init__(self, redirect: tuple[int, str, int] | None = None) -> None:
        self.seen: list[tuple[str, str, dict]] = []
        self.redirect = redirect
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                recorder.seen.append((self.command, self.path, dict(self.headers)))
                healthz_seen = sum(p.startswith(HEALTHZ) for _, p, _ in recorder.seen)
                spare = recorder.redirect[2] if recorder.redirect else 0
                if recorder.redirect and not (
                    self.path.startswith(HEALTHZ) and healthz_seen <= spare
                ):
                    status, location, _ = recorder.redirect
                    self.send_response(status)
                    self.send_header("Location", location + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                send_healthy(self)

            do_GET = do_POST = do_DELETE = _answer

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def recorders():
    made: list[Recorder] = []

    def make(redirect=None) -> Recorder:
        made.append(Recorder(redirect))
        return made[-1]

    yield make
    for r in made:
        r.stop()


@pytest.fixture
def names(monkeypatch):
    """``names[NAME] = "127.0.0.1"`` makes NAME resolve to loopback in this process; any other
    name that is not loopback fails to resolve (and is recorded in ``names.refused``)."""
    real = socket.getaddrinfo

    class Names(dict):
        pass

    table = Names()
    table.refused = []

    def getaddrinfo(host, *args, **kwargs):
        host = host.decode() if isinstance(host, bytes) else host
        if host in table:
            return real(table[host], *args, **kwargs)
        if kfp_transport.is_loopback(str(host)):
            return real(host, *args, **kwargs)
        table.refused.append(host)
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: not resolved in this test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def sent_token(exchanges_headers) -> bool:
    return any(TOKEN in value for headers in exchanges_headers for value in headers.values())


# --------------------------------------------------------------------------------------------
# redirects


def _submit_refused(capsys, host: str, package: str) -> str:
    """`tfpipes submit` with the sentinel token to ``host``: exit 2; returns its stderr."""
    code, _, err = run_cli(
        capsys, "submit", "--host", host, "--package", package, "--param", "source=s",
        "--token", TOKEN,
    )  # fmt: skip
    assert code == 2
    return err


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_health_check_never_follows_a_redirect_to_another_origin(
    recorders, package, capsys, status
):
    elsewhere = recorders()
    redirector = recorders((status, elsewhere.url, 0))
    err = _submit_refused(capsys, redirector.url, package)
    line = one_line_error(err)
    assert f"HTTP {status} redirect to {elsewhere.url}{HEALTHZ} (another origin)" in line
    assert TOKEN not in err
    # urllib used to follow it, Authorization header and all.
    assert elsewhere.seen == []


def test_kfp_client_requests_never_follow_a_redirect(recorders, package, capsys):
    """The health check passes; every later request (kfp.Client's own health check in its
    constructor included, then the API calls) is redirected to another server."""
    elsewhere = recorders()
    redirector = recorders((307, elsewhere.url, 1))
    err = _submit_refused(capsys, redirector.url, package)
    line = one_line_error(err)
    assert "HTTP 307 redirect to " + elsewhere.url in line and "(another origin)" in line
    assert TOKEN not in err
    assert len(redirector.seen) >= 2  # the check, then a kfp.Client request that was refused
    assert elsewhere.seen == []


def test_a_same_origin_redirect_is_refused_too(recorders, package, capsys):
    redirector = recorders((302, "", 0))  # Location: the same path on the same server
    redirector.redirect = (302, redirector.url + "/moved", 0)
    err = _submit_refused(capsys, redirector.url, package)
    assert "(the same server)" in one_line_error(err)
    assert [p for _, p, _ in redirector.seen] == [HEALTHZ]


# --------------------------------------------------------------------------------------------
# plain http


def test_a_token_over_plain_http_to_another_machine_is_refused(kfp_server, names, package, capsys):
    names["kfp.remote.test"] = "127.0.0.1"
    host = f"http://kfp.remote.test:{kfp_server.port}"
    kfp_server.require_token(TOKEN)
    code, _, err = run_cli(
        capsys, "submit", "--host", host, "--package", package, "--param", "source=s",
        "--token", TOKEN,
    )  # fmt: skip
    assert code == 2
    line = one_line_error(err)
    assert f"--host {host}: plain http://" in line and "--allow-insecure-http" in line
    assert kfp_server.exchanges == []  # refused before anything was sent

    # Asked for explicitly, it goes.
    code, out, err = run_cli(
        capsys, "submit", "--host", host, "--package", package, "--param", "source=s",
        "--token", TOKEN, "--allow-insecure-http",
    )  # fmt: skip
    assert code == 0, err
    assert RUN_ID.search(out)
    assert sent_token(e.headers for e in kfp_server.exchanges)
    assert names.refused == []  # nothing tried another name


def test_plain_http_without_a_token_and_loopback_names_need_no_flag(
    kfp_server, names, package, capsys
):
    names["kfp.remote.test"] = "127.0.0.1"
    code, _, err = run_cli(
        capsys, "submit", "--host", f"http://kfp.remote.test:{kfp_server.port}",
        "--package", package, "--param", "source=s",
    )  # fmt: skip
    assert code == 0, err
    kfp_server.require_token(TOKEN)
    for host in (f"http://localhost:{kfp_server.port}", kfp_server.url):
        code, _, err = run_cli(
            capsys, "submit", "--host", host, "--package", package, "--param", "source=s",
            "--token", TOKEN,
        )  # fmt: skip
        assert code == 0, err


def test_loopback_and_in_cluster_names():
    assert kfp_transport.is_loopback("127.0.0.1")
    assert kfp_transport.is_loopback("127.1.2.3")
    assert kfp_transport.is_loopback("::1")
    assert kfp_transport.is_loopback("[::1]")
    assert kfp_transport.is_loopback("localhost")
    assert not kfp_transport.is_loopback("10.0.0.1")
    assert not kfp_transport.is_loopback("localhost.example.com")
    assert not kfp_transport.is_loopback("127.0.0.1.nip.io")
    assert kfp_transport.is_in_cluster_host("ml-pipeline.kubeflow.svc.cluster.local")
    assert kfp_transport.is_in_cluster_host("ml-pipeline.team-a.svc")
    assert not kfp_transport.is_in_cluster_host("ml-pipeline.kubeflow.svc.cluster.local.evil.io")
    assert not kfp_transport.is_in_cluster_host("ml-pipeline.example.com")


# --------------------------------------------------------------------------------------------
# malformed tokens


@pytest.mark.parametrize(
    "bad",
    [
        f"{TOKEN}\nX-Injected: 1",
        f"ab\r\n{TOKEN}",
        f"{TOKEN}\x01",
        f"\x1b[2J{TOKEN}",
        f"{TOKEN}\x7f",
    ],
)
@pytest.mark.parametrize("how", ["flag", "file", "env"])
def test_a_token_with_a_newline_or_control_character_is_refused_unseen(
    kfp_server, package, capsys, tmp_path, monkeypatch, bad, how
):
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    extra = []
    if how == "flag":
        extra = ["--token", bad]
    elif how == "file":
        (tmp_path / "token").write_text(bad)
        extra = ["--token-file", str(tmp_path / "token")]
    else:
        monkeypatch.setenv("KF_PIPELINES_TOKEN", bad)
    code, out, err = submit(capsys, kfp_server, package, "--param", "source=s", *extra)
    assert code == 2
    line = one_line_error(err)
    assert "one line of printable ASCII" in line
    assert {"flag": "--token", "file": "--token-file", "env": "$KF_PIPELINES_TOKEN"}[how] in line
    assert TOKEN not in err + out and "\x1b" not in err
    assert kfp_server.exchanges == []


def test_a_token_file_that_is_not_text_is_one_line(kfp_server, package, capsys, tmp_path):
    (tmp_path / "token").write_bytes(b"\xff\xfe" + TOKEN.encode())
    code, _, err = submit(
        capsys, kfp_server, package, "--param", "source=s", "--token-file", str(tmp_path / "token")
    )
    assert code == 2
    assert "is not UTF-8 text" in one_line_error(err) and TOKEN not in err


# --------------------------------------------------------------------------------------------
# the service-account token


@pytest.fixture
def sa_token(tmp_path, monkeypatch):
    path = tmp_path / "sa-token"
    path.write_text(TOKEN + "\n")
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(path))
    return path


def test_the_service_account_token_is_not_sent_unless_asked(kfp_server, package, capsys, sa_token):
    kfp_server.require_token(TOKEN)
    code, _, err = submit(capsys, kfp_server, package, "--param", "source=s")
    assert code == 2
    assert "authentication failed" in one_line_error(err)  # the server saw no token
    assert not sent_token(e.headers for e in kfp_server.exchanges)

    code, out, err = submit(capsys, kfp_server, package, "--param", "source=s", "--in-cluster-auth")
    assert code == 0, err
    assert RUN_ID.search(out)


def test_the_service_account_token_goes_to_the_in_cluster_address(
    kfp_server, names, package, capsys, sa_token
):
    names["ml-pipeline.kubeflow.svc.cluster.local"] = "127.0.0.1"
    kfp_server.require_token(TOKEN)
    host = f"http://ml-pipeline.kubeflow.svc.cluster.local:{kfp_server.port}"
    code, out, err = run_cli(
        capsys, "submit", "--host", host, "--package", package, "--param", "source=s",
        "--allow-insecure-http",
    )  # fmt: skip
    assert code == 0, err
    assert RUN_ID.search(out)


def test_in_cluster_auth_without_a_token_file_is_one_line(
    kfp_server, package, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "none"))
    code, _, err = submit(capsys, kfp_server, package, "--param", "source=s", "--in-cluster-auth")
    assert code == 2
    line = one_line_error(err)
    assert "cannot read the token file (--in-cluster-auth" in line
    assert kfp_server.exchanges == []


def test_only_one_token_source_at_a_time(kfp_server, package, capsys):
    with pytest.raises(SystemExit) as exit_info:
        submit(capsys, kfp_server, package, "--token", "a", "--in-cluster-auth")
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
