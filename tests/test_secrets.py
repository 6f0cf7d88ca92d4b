"""No credential ever leaves where it belongs (issue 12): the real entry points run with sentinel
secrets in every place a user keeps them (a KFP token in $KF_PIPELINES_TOKEN and a token file,
a service-account token file, a GCS service-account key file in $GOOGLE_APPLICATION_CREDENTIALS,
a key file left in the checkout), then every output, log line, request sent and file written
is searched for them.

A secret's *name* (``--gcs-secret NAME``) is a reference and belongs in a manifest; its value
(the key file's content) must never appear anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO, tfpipes_exe

TOKEN = "kfp-token-sentinel-5b2e91d0"
WRONG_TOKEN = "kfp-wrong-token-sentinel-0c7d44aa"
SA_TOKEN = "sa-token-sentinel-a18f6e23"
KEY_SECRET = "gcs-private-key-sentinel-93dd07be"
SECRET_NAME = "gcs-sentinel-secret"
SENTINELS = (TOKEN, WRONG_TOKEN, SA_TOKEN, KEY_SECRET)


def key_file_content() -> str:
    """A service-account key as GCP writes it, the private parts replaced by the sentinel."""
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "sentinel-project",
            "private_key_id": KEY_SECRET,
            "private_key": f"-----BEGIN PRIVATE KEY-----\n{KEY_SECRET}\n-----END PRIVATE KEY-----",
            "client_email": "sentinel@sentinel-project.iam.gserviceaccount.com",
        }
    )


def leaks(data: bytes | str, sentinels=SENTINELS) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return [s for s in sentinels if s in text]


class Secrets:
    """The sentinel files, an environment that points at them, and a scan of a directory."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "secrets"
        self.dir.mkdir()
        self.token_file = self.dir / "token"
        self.token_file.write_text(TOKEN + "\n")
        self.wrong_token_file = self.dir / "wrong-token"
        self.wrong_token_file.write_text(WRONG_TOKEN + "\n")
        self.sa_token_file = self.dir / "sa-token"
        self.sa_token_file.write_text(SA_TOKEN + "\n")
        self.key_file = self.dir / "key.json"
        self.key_file.write_text(key_file_content())
        self.home = root / "home"
        self.home.mkdir()
        self.work = root / "work"
        self.work.mkdir()
        self.env = {
            **os.environ,
            "HOME": str(self.home),  # kfp.Client reads and may write ~/.config/kfp
            "KF_PIPELINES_TOKEN": TOKEN,
            "KF_PIPELINES_SA_TOKEN_PATH": str(self.sa_token_file),
            "GOOGLE_APPLICATION_CREDENTIALS": str(self.key_file),
        }
        self.outputs: list[tuple[str, str]] = []  # (what, text) of every run

    def run(self, *argv: str, expect: int = 0) -> subprocess.CompletedProcess:
        """Run ``tfpipes -vv ARGV`` (the most verbose logs) in the work directory."""
        result = subprocess.run(
            [tfpipes_exe(), "-vv", *argv],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        what = " ".join(argv[:2])
        self.outputs += [(f"{what} stdout", result.stdout), (f"{what} stderr", result.stderr)]
        assert result.returncode == expect, f"{what}: exit {result.returncode}\n{result.stderr}"
        return result

    def written_files(self) -> list[Path]:
        """Every file the runs wrote (the secrets' own files excepted)."""
        roots = (self.home, self.work)
        return [p for root in roots for p in root.rglob("*") if p.is_file()]

    def assert_nothing_leaked(self) -> None:
        found = [f"{what}: {leaks(text)}" for what, text in self.outputs if leaks(text)]
        found += [f"{p}: {leaks(p.read_bytes())}" for p in self.written_files()]
        found = [f for f in found if not f.endswith(": []")]
        assert not found, "secrets leaked:\n" + "\n".join(found)


@pytest.fixture
def secrets(tmp_path) -> Secrets:
    return Secrets(tmp_path)


@pytest.mark.kfp
@pytest.mark.timeout(900)
def test_submit_and_schedule_send_the_token_only_as_the_authorization_header(kfp_server, secrets):
    kfp_server.require_token(TOKEN)
    host = ("--host", kfp_server.url)
    params = ("--param", "source=gs://b/d.csv", "--param", "label=y")
    run = secrets.run(
        "submit", *host, *params, "--gcs-secret", SECRET_NAME, "--wait", "--poll-interval", "0.05"
    )
    assert "SUCCEEDED" in run.stdout  # the token from the environment was sent and accepted
    secrets.run(
        "schedule", "create", *host, *params, "--name", "nightly", "--cron", "0 3 * * *",
        "--token-file", str(secrets.token_file),
    )  # fmt: skip
    secrets.run("schedule", "list", *host)
    # Errors carry no token either: a rejected one, a malformed one, an unreachable server.
    denied = secrets.run(
        "submit", *host, *params, "--token-file", str(secrets.wrong_token_file), expect=2
    )
    assert "permission denied" in denied.stderr
    secrets.env["KF_PIPELINES_TOKEN"] = f"{TOKEN}\nX: y"
    secrets.run("submit", *host, *params, expect=2)
    secrets.env["KF_PIPELINES_TOKEN"] = TOKEN
    secrets.run("submit", "--host", "http://127.0.0.1:9", *params, expect=138)

    secrets.assert_nothing_leaked()
    uploads = [e for e in kfp_server.exchanges if "/upload" in e.path]
    assert uploads, "no package was uploaded"
    assert any(SECRET_NAME.encode() in e.raw for e in uploads)  # the name is compiled in
    for exchange in kfp_server.exchanges:
        where = f"{exchange.method} {exchange.path}"
        assert not leaks(exchange.raw), f"{where}: a secret in the request body"
        headers = {k.lower(): v for k, v in exchange.headers.items()}
        auth = headers.pop("authorization", "")
        assert auth in ("", f"Bearer {TOKEN}", f"Bearer {WRONG_TOKEN}"), where
        assert not leaks(json.dumps(headers)), f"{where}: a secret in a header"
        assert not leaks(json.dumps(exchange.response)), f"{where}: a secret in the answer"
    # The service-account token is for in-cluster use: never sent to this host.
    assert not any(SA_TOKEN in json.dumps(e.headers) for e in kfp_server.exchanges)


@pytest.mark.timeout(600)
def test_compiled_pipelines_and_tfjob_manifests_hold_no_secret(secrets):
    secrets.run("compile", "-o", "pipeline.yaml", "--gcs-secret", SECRET_NAME)
    secrets.run("compile", "--distributed", "-o", "distributed.yaml", "--gcs-secret", SECRET_NAME)
    tfjob = secrets.run(
        "tfjob", "--workers", "2", "--ps", "1", "--image", "tfpipes:0.1.0",
        "--gcs-secret", SECRET_NAME, "--",
        "--data", "gs://b/data", "--model-dir", "gs://b/model",
    )  # fmt: skip
    (secrets.work / "tfjob.yaml").write_text(tfjob.stdout)
    secrets.assert_nothing_leaked()
    # The secret is referenced by name where a step needs it, so the check saw real output.
    for name in ("pipeline.yaml", "distributed.yaml", "tfjob.yaml"):
        assert SECRET_NAME in (secrets.work / name).read_text(), name


# --------------------------------------------------------------------------------------------
# the image


def _stream_leaks(stream, chunk: int = 1 << 20) -> list[str]:
    """The sentinels in a file read piece by piece (an image holds files of hundreds of MB)."""
    found: set[str] = set()
    overlap = max(len(s) for s in SENTINELS)
    tail = b""
    while piece := stream.read(chunk):
        found.update(leaks(tail + piece))
        tail = piece[-overlap:]
    return sorted(found)


def _scan_image(image: str, out: Path, min_layers: int) -> list[str]:
    """Every file in every layer, the image config (environment, labels, history) and the
    manifest, searched for sentinels. Whatever `docker save` writes (legacy or OCI layout), a
    member that is a tar is a layer and is searched file by file."""
    archive = out / "image.tar"
    subprocess.run(["docker", "save", "-o", str(archive), image], check=True, timeout=900)
    found, layers = [], 0
    try:
        with tarfile.open(archive) as outer:
            for member in outer:
                if not member.isfile():
                    continue
                try:
                    layer = tarfile.open(fileobj=outer.extractfile(member))
                except tarfile.TarError:
                    hit = _stream_leaks(outer.extractfile(member))
                    found += [f"{member.name}: {hit}"] if hit else []
                    continue
                layers += 1
                with layer:
                    for entry in layer:
                        if entry.isfile():
                            hit = _stream_leaks(layer.extractfile(entry))
                            found += [f"{member.name}:{entry.name}: {hit}"] if hit else []
    finally:
        archive.unlink()
    assert layers >= min_layers, f"{image}: {layers} layers read, expected {min_layers}+"
    return found


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_the_image_holds_no_secret_from_the_build_machine(tmp_path):
    """Build the image as docker/build.sh does, with the sentinels in the builder's environment
    and a key file left in the checkout (untracked, where a developer drops one), then search
    every layer."""
    secrets = Secrets(tmp_path)
    planted = [Path(REPO) / "gcs-key-sentinel.json", Path(REPO) / "tfpipes" / "key-sentinel.json"]
    planted = [p for p in planted if not p.exists()]
    image = "tfpipes-secrets-check:latest"
    try:
        for path in planted:
            path.write_text(key_file_content())
        build = subprocess.run(
            [os.path.join(REPO, "docker", "build.sh"), "--tag", image],
            env={**secrets.env, "HOME": os.environ.get("HOME", str(secrets.home))},
            capture_output=True,
            text=True,
            timeout=2700,
        )
        assert build.returncode == 0, build.stderr[-4000:]
        assert not leaks(build.stdout + build.stderr), "the build log shows a secret"
        # The base, the dependencies and tfpipes are three layers at least.
        assert _scan_image(image, tmp_path, min_layers=3) == []
    finally:
        for path in planted:
            path.unlink(missing_ok=True)
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, timeout=300)


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_the_image_scan_finds_a_planted_secret(tmp_path):
    """The search above can fail: a secret in a layer's file and one in the image's environment
    are both found (so an empty result means the image is clean, not that nothing was read)."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "key.json").write_text(key_file_content())
    (context / "Dockerfile").write_text(
        f'FROM scratch\nCOPY key.json /home/key.json\nENV KF_PIPELINES_TOKEN="{TOKEN}"\n'
        'CMD ["/none"]\n'
    )
    image = "tfpipes-secrets-scan-check:latest"
    try:
        subprocess.run(
            ["docker", "build", "--network", "none", "-t", image, str(context)],
            check=True,
            capture_output=True,
            timeout=300,
        )
        found = _scan_image(image, tmp_path, min_layers=1)
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True, timeout=300)
    assert any("home/key.json" in f and KEY_SECRET in f for f in found), found
    assert any(TOKEN in f and "home/key.json" not in f for f in found), found
