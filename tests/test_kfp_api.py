"""``tfpipes submit`` and ``tfpipes schedule`` against a local KFP API server that checks every
request and response against the official v2beta1 contract (tests/kfp_api_server.py)."""

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.kfp_api_server import FAIL_RUN_VALUE, KfpApiServer
from tfpipes import cli

pytestmark = [pytest.mark.kfp, pytest.mark.timeout(60)]

API = "/apis/v2beta1"
RUN_ID = re.compile(r"^run ([0-9a-f-]{36})$", re.MULTILINE)


# --------------------------------------------------------------------------------------------
# fixtures and helpers


def send_healthy(handler: BaseHTTPRequestHandler) -> None:
    """Answer a request the way a single-user KFP API answers its health check."""
    body = b'{"multi_user": false}'
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _compile(path, name: str = "tiny-train") -> str:
    """A trivial pipeline with the kinds of parameters the training pipeline has."""
    from kfp import compiler, dsl

    @dsl.container_component
    def echo(msg: str, steps: int):
        return dsl.ContainerSpec(image="busybox", command=["echo"], args=[msg, steps])

    @dsl.pipeline(name=name)
    def tiny(
        source: str,
        label: str = "y",
        train_steps: int = 10,
        learning_rate: float = 0.1,
        shuffle: bool = False,
        model_version: str = "",
    ):
        echo(msg=source, steps=train_steps)

    compiler.Compiler().compile(tiny, str(path))
    return str(path)


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    return _compile(tmp_path_factory.mktemp("pkg") / "pipeline.yaml")


@pytest.fixture(scope="module")
def package_v2(tmp_path_factory) -> str:
    """The same pipeline name with one parameter fewer (label) — a 'new version'."""
    from kfp import compiler, dsl

    @dsl.container_component
    def echo(msg: str):
        return dsl.ContainerSpec(image="busybox", command=["echo"], args=[msg])

    @dsl.pipeline(name="tiny-train")
    def tiny(source: str, train_steps: int = 20, model_version: str = ""):
        echo(msg=source)

    path = tmp_path_factory.mktemp("pkg2") / "pipeline.yaml"
    compiler.Compiler().compile(tiny, str(path))
    return str(path)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def submit(capsys, server: KfpApiServer, package: str, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "submit", "--host", server.url, "--package", package, *extra)


def schedule(capsys, server: KfpApiServer, action: str, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "schedule", action, "--host", server.url, *extra)


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# submit


def test_submit_uploads_a_pipeline_then_new_versions_of_it(kfp_server, package, capsys):
    code, out, _ = submit(capsys, kfp_server, package, "--param", "source=gs://b/d.csv")
    assert code == 0
    first = RUN_ID.search(out).group(1)
    assert f"{kfp_server.url}/#/runs/details/{first}" in out

    code, out, _ = submit(
        capsys, kfp_server, package, "--param", "source=gs://b/d.csv", "--experiment", "nightly"
    )
    assert code == 0
    second = RUN_ID.search(out).group(1)

    state = kfp_server.state
    assert len(state.pipelines) == 1
    (pipeline,) = state.pipelines.values()
    assert pipeline["name"] == "tiny-train"
    versions = {v["pipeline_version_id"] for v in state.versions.values()}
    assert len(versions) == 2
    refs = [state.runs[r]["pipeline_version_reference"] for r in (first, second)]
    assert {r["pipeline_version_id"] for r in refs} == versions
    assert all(r["pipeline_id"] == pipeline["pipeline_id"] for r in refs)
    names = {
        state.experiments[state.runs[r]["experiment_id"]]["display_name"] for r in (first, second)
    }
    assert names == {"Default", "nightly"}
    # A run refers to the uploaded version; it never carries an inline spec.
    assert all("pipeline_spec" not in e.body for e in kfp_server.requests_to("/runs"))


def test_submit_sends_parameters_as_their_declared_types(kfp_server, package, capsys):
    code, _, _ = submit(
        capsys,
        kfp_server,
        package,
        "--param", "source=s",
        "--param", "train_steps=20",
        "--param", "learning_rate=0.5",
        "--param", "shuffle=true",
        "--param", "label=3",
    )  # fmt: skip
    assert code == 0
    (request,) = kfp_server.requests_to("/runs")
    assert request.body["runtime_config"]["parameters"] == {
        "source": "s",
        "train_steps": 20,
        "learning_rate": 0.5,
        "shuffle": True,
        "label": "3",
    }


def test_submit_compiles_the_training_pipeline_by_default(kfp_server, capsys):
    code, out, err = run_cli(
        capsys, "submit", "--host", kfp_server.url, "--param", "source=gs://b/d.csv",
        "--param", "label=y", "--param", "train_steps=50", "--wait", "--poll-interval", "0.05",
    )  # fmt: skip
    assert code == 0, err
    assert re.search(r"^run [0-9a-f-]{36} SUCCEEDED$", out, re.MULTILINE)
    (pipeline,) = kfp_server.state.pipelines.values()
    assert pipeline["name"] == "tfpipes-training"


def test_submit_wait_exits_0_when_the_run_succeeds(kfp_server, package, capsys):
    code, out, _ = submit(
        capsys, kfp_server, package, "--param", "source=s", "--param", "train_steps=5",
        "--wait", "--poll-interval", "0.05",
    )  # fmt: skip
    assert code == 0
    run_id = RUN_ID.search(out).group(1)
    assert f"run {run_id} SUCCEEDED" in out
    assert kfp_server.state.runs[run_id]["state"] == "SUCCEEDED"


def test_submit_wait_exits_1_when_the_run_fails(kfp_server, package, capsys):
    code, out, _ = submit(
        capsys, kfp_server, package, "--param", f"source={FAIL_RUN_VALUE}",
        "--wait", "--poll-interval", "0.05",
    )  # fmt: skip
    assert code == 1
    assert re.search(r"^run [0-9a-f-]{36} FAILED: ", out, re.MULTILINE)


def test_submit_wait_gives_up_at_the_timeout_with_124(kfp_server, package, capsys):
    code, _, err = submit(
        capsys, kfp_server, package, "--param", "source=s",
        "--wait", "--timeout", "0.001", "--poll-interval", "0.001",
    )  # fmt: skip
    assert code == 124
    assert "--timeout" in one_line_error(err)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # kfp.Client's greeting
def test_kfp_clients_own_wait_for_run_completion_works_against_the_server(kfp_server, package):
    import kfp

    client = kfp.Client(host=kfp_server.url)
    pipeline = client.upload_pipeline(package, pipeline_name="p")
    assert client.get_pipeline_id("p") == pipeline.pipeline_id  # a JSON filter on display_name
    version = client.list_pipeline_versions(pipeline.pipeline_id).pipeline_versions[0]
    run = client.run_pipeline(
        client.create_experiment("e").experiment_id,
        "job",
        params={"source": "x"},
        pipeline_id=pipeline.pipeline_id,
        version_id=version.pipeline_version_id,
    )
    done = client.wait_for_run_completion(run.run_id, timeout=20, sleep_duration=0.01)
    assert done.state == "SUCCEEDED"


@pytest.mark.parametrize(
    "params, message",
    [
        (["source=s", "epochs=3"], "--param epochs: pipeline 'tiny-train' has no parameter"),
        (["source=s", "train_steps=many"], "--param train_steps=many: expected an integer"),
        (["source=s", "shuffle=maybe"], "--param shuffle=maybe: expected true or false"),
        (["label=y"], "needs a value for source: --param source=..."),
        (["source"], "--param 'source': expected NAME=VALUE"),
    ],
)
def test_submit_rejects_bad_parameters_before_sending_anything(
    kfp_server, package, capsys, params, message
):
    argv = [a for p in params for a in ("--param", p)]
    code, _, err = submit(capsys, kfp_server, package, *argv)
    assert code == 2
    assert message in one_line_error(err)
    assert kfp_server.exchanges == []


def test_unknown_parameter_error_lists_the_valid_ones(kfp_server, package, capsys):
    _, _, err = submit(capsys, kfp_server, package, "--param", "source=s", "--param", "x=1")
    assert "(valid: label, learning_rate, model_version, shuffle, source, train_steps)" in err


def test_unknown_experiment_id_is_a_404_error(kfp_server, package, capsys):
    code, _, err = submit(
        capsys, kfp_server, package, "--param", "source=s", "--experiment-id", "no-such-id"
    )
    assert code == 2
    line = one_line_error(err)
    assert "no experiment with ID 'no-such-id'" in line and "HTTP 404" in line


def test_unreachable_server_fails_fast_with_one_line(package, capsys):
    started = time.monotonic()
    code, _, err = run_cli(
        capsys, "submit", "--host", f"http://127.0.0.1:{free_port()}", "--package", package,
        "--param", "source=s",
    )  # fmt: skip
    assert code == 138  # the environment failing (issue 12): retryable, not the user's mistake
    assert "cannot reach the KFP API at http://127.0.0.1:" in one_line_error(err)
    assert time.monotonic() - started < 10


@pytest.fixture
def hung_server():
    """A server on 127.0.0.1 that passes the session's health check, then answers nothing."""
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path.startswith(f"{API}/healthz"):
                send_healthy(self)
                return
            release.wait(30)

        do_POST = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    release.set()
    server.shutdown()
    server.server_close()


def test_a_hung_server_is_given_up_and_the_socket_default_untouched(hung_server, package, capsys):
    from tfpipes_pipelines.kfp_session import KfpSession

    from tfpipes.errors import RetryableError

    before = socket.getdefaulttimeout()
    started = time.monotonic()
    with KfpSession(hung_server, timeout=0.3) as session:
        # The bound is this session's own: nothing else in the process gets a timeout.
        assert socket.getdefaulttimeout() == before
        with pytest.raises(RetryableError, match="cannot reach the KFP API at .* while looking"):
            session.find_pipeline("tiny-train")
    assert time.monotonic() - started < 10
    assert socket.getdefaulttimeout() == before

    code, _, err = run_cli(
        capsys, "submit", "--host", hung_server, "--package", package, "--param", "source=s",
        "--request-timeout", "0.3",
    )  # fmt: skip
    assert code == 138  # a server that answers nothing is unreachable too (issue 12)
    assert "cannot reach the KFP API at http://127.0.0.1:" in one_line_error(err)
    assert time.monotonic() - started < 20
    assert socket.getdefaulttimeout() == before


def test_wrong_url_says_it_is_not_a_kfp_api(kfp_server, package, capsys):
    code, _, err = run_cli(
        capsys, "submit", "--host", kfp_server.url + "/pipeline", "--package", package,
        "--param", "source=s",
    )  # fmt: skip
    assert code == 2
    assert "no KFP API at" in one_line_error(err)


# --------------------------------------------------------------------------------------------
# authentication


def test_missing_token_is_authentication_failed_with_a_hint(kfp_server, package, capsys):
    kfp_server.require_token("s3cret")
    code, _, err = submit(capsys, kfp_server, package, "--param", "source=s")
    assert code == 2
    line = one_line_error(err)
    assert "authentication failed" in line and "HTTP 401" in line
    assert "--token" in line and "KF_PIPELINES_TOKEN" in line


def test_wrong_token_is_permission_denied(kfp_server, package, capsys):
    kfp_server.require_token("s3cret")
    code, _, err = submit(capsys, kfp_server, package, "--param", "source=s", "--token", "nope")
    assert code == 2
    line = one_line_error(err)
    assert "permission denied" in line and "HTTP 403" in line and "--token" in line


@pytest.mark.parametrize("how", ["flag", "file", "env", "sa-path-env"])
def test_token_from_flag_file_or_environment(
    kfp_server, package, capsys, tmp_path, monkeypatch, how
):
    kfp_server.require_token("s3cret")
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    monkeypatch.delenv("KF_PIPELINES_TOKEN", raising=False)
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH", raising=False)
    extra = []
    if how == "flag":
        extra = ["--token", "s3cret"]
    elif how == "file":
        extra = ["--token-file", str(token_file)]
    elif how == "env":
        monkeypatch.setenv("KF_PIPELINES_TOKEN", "s3cret")
    else:
        # Only when asked for (issue 12): the service-account token is meant for in-cluster use.
        monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
        extra = ["--in-cluster-auth"]
    code, out, err = submit(capsys, kfp_server, package, "--param", "source=s", *extra)
    assert code == 0, err
    assert RUN_ID.search(out)


def test_missing_token_file_is_a_one_line_error(kfp_server, package, capsys, tmp_path):
    code, _, err = submit(
        capsys, kfp_server, package, "--param", "source=s", "--token-file", str(tmp_path / "nope")
    )
    assert code == 2
    assert "cannot read the token file (--token-file)" in one_line_error(err)


# --------------------------------------------------------------------------------------------
# schedules


def test_schedule_create_with_cron_refers_to_an_uploaded_version(kfp_server, package, capsys):
    code, out, err = schedule(
        capsys, kfp_server, "create", "--package", package, "--name", "nightly",
        "--cron", "0 3 * * *", "--param", "source=gs://b/d.csv", "--max-concurrency", "2",
        "--no-catchup", "--start-time", "2030-01-01T00:00:00", "--end-time", "2031-01-01T00:00:00Z",
    )  # fmt: skip
    assert code == 0, err
    assert "schedule nightly " in out and "cron 0 0 3 * * *" in out

    (request,) = kfp_server.requests_to("/recurringruns")
    body = request.body
    assert request.status == 200
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"  # seconds first, for KFP
    assert body["trigger"]["cron_schedule"]["start_time"] == "2030-01-01T00:00:00Z"
    assert "pipeline_spec" not in body
    (version_id,) = kfp_server.state.versions
    assert body["pipeline_version_reference"]["pipeline_version_id"] == version_id
    assert body["runtime_config"]["parameters"] == {
        "source": "gs://b/d.csv",
        "model_version": "[[ScheduledTime]]",
    }
    assert body["max_concurrency"] == 2 and body["no_catchup"] is True
    assert body["mode"] == "ENABLE"


def test_schedule_create_every_is_a_periodic_schedule(kfp_server, package, capsys):
    code, out, err = schedule(
        capsys, kfp_server, "create", "--package", package, "--name", "often",
        "--every", "6h", "--param", "source=s", "--param", "model_version=fixed",
    )  # fmt: skip
    assert code == 0, err
    assert "every 6h" in out
    (rr,) = kfp_server.state.recurring_runs.values()
    assert rr["trigger"] == {"periodic_schedule": {"interval_second": "21600"}}
    assert rr["runtime_config"]["parameters"]["model_version"] == "fixed"  # the user's wins


def test_schedule_list_disable_enable_update_delete(kfp_server, package, package_v2, capsys):
    for name, when in (("nightly", ["--cron", "0 3 * * *"]), ("often", ["--every", "30m"])):
        code, _, err = schedule(
            capsys, kfp_server, "create", "--package", package, "--name", name, *when,
            "--param", "source=s", "--param", "label=lbl",
        )  # fmt: skip
        assert code == 0, err

    code, out, _ = schedule(capsys, kfp_server, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "TRIGGER", "NAME", "PIPELINE", "VERSION"]
    assert re.search(r"enabled\s+cron 0 0 3 \* \* \*\s+nightly", out)
    assert re.search(r"enabled\s+every 30m\s+often", out)

    assert schedule(capsys, kfp_server, "disable", "nightly")[0] == 0
    nightly = next(
        r for r in kfp_server.state.recurring_runs.values() if r["display_name"] == "nightly"
    )
    assert nightly["status"] == "DISABLED"
    assert re.search(
        r"disabled\s+cron 0 0 3 \* \* \*\s+nightly",
        run_cli(capsys, "schedule", "list", "--host", kfp_server.url)[1],
    )

    code, out, _ = schedule(capsys, kfp_server, "enable", nightly["recurring_run_id"])  # by ID
    assert code == 0 and "enabled schedule nightly" in out
    assert nightly["status"] == "ENABLED"
    schedule(capsys, kfp_server, "disable", "nightly")

    old_id, old_version = nightly["recurring_run_id"], nightly["pipeline_version_reference"]
    code, out, err = schedule(
        capsys, kfp_server, "update", "nightly", "--package", package_v2, "--param", "train_steps=7"
    )
    assert code == 0, err
    assert f"updated schedule nightly: {old_id} -> " in out
    assert old_id not in kfp_server.state.recurring_runs
    (new,) = [r for r in kfp_server.state.recurring_runs.values() if r["display_name"] == "nightly"]
    ref = new["pipeline_version_reference"]
    assert ref["pipeline_id"] == old_version["pipeline_id"]
    assert ref["pipeline_version_id"] != old_version["pipeline_version_id"]
    assert new["trigger"] == nightly["trigger"]
    assert new["status"] == "DISABLED"  # kept
    # label is gone from the new pipeline; source kept; train_steps overridden as an int.
    assert new["runtime_config"]["parameters"] == {
        "source": "s",
        "train_steps": 7,
        "model_version": "[[ScheduledTime]]",
    }
    assert len(kfp_server.state.pipelines) == 1

    code, out, _ = schedule(capsys, kfp_server, "delete", "nightly")
    assert code == 0 and "deleted schedule nightly" in out
    assert [r["display_name"] for r in kfp_server.state.recurring_runs.values()] == ["often"]
    code, _, err = schedule(capsys, kfp_server, "delete", "nightly")
    assert code == 2
    assert "no schedule named or with ID 'nightly'" in one_line_error(err)


def test_schedule_follow_latest_runs_whatever_version_is_newest(
    kfp_server, package, package_v2, capsys
):
    kfp_server.require_token("s3cret")  # the REST request keeps the session's token rules
    code, out, err = schedule(
        capsys, kfp_server, "create", "--package", package, "--name", "latest", "--token",
        "s3cret", "--cron", "0 3 * * *", "--param", "source=s", "--follow-latest",
    )  # fmt: skip
    assert code == 0, err
    assert "schedule latest " in out
    assert "pipeline tiny-train, following its latest version (now tiny-train)" in out

    (request,) = kfp_server.requests_to("/recurringruns")
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert request.status == 200 and headers["authorization"] == "Bearer s3cret"
    (pipeline_id,) = kfp_server.state.pipelines
    assert request.body["pipeline_version_reference"] == {"pipeline_id": pipeline_id}
    assert "pipeline_spec" not in request.body
    assert request.body["runtime_config"]["parameters"] == {
        "source": "s",
        "model_version": "[[ScheduledTime]]",
    }
    (rr,) = kfp_server.state.recurring_runs.values()
    assert rr["pipeline_version_reference"] == {"pipeline_id": pipeline_id}  # no version pinned

    # New code reaches the schedule without touching it: a submit uploads a newer version.
    code, _, err = submit(
        capsys, kfp_server, package_v2, "--param", "source=s", "--token", "s3cret"
    )
    assert code == 0, err
    assert len(kfp_server.state.versions) == 2
    assert kfp_server.state.recurring_runs[rr["recurring_run_id"]] == rr

    code, out, err = schedule(capsys, kfp_server, "list", "--token", "s3cret")
    assert code == 0, err
    assert re.search(
        rf"enabled\s+cron 0 0 3 \* \* \*\s+latest\s+latest of pipeline {pipeline_id}", out
    )

    # update keeps it following (and still never pins a version).
    code, out, err = schedule(
        capsys, kfp_server, "update", "latest", "--package", package_v2, "--token", "s3cret"
    )
    assert code == 0, err
    (new,) = kfp_server.state.recurring_runs.values()
    assert new["pipeline_version_reference"] == {"pipeline_id": pipeline_id}
    assert not kfp_server.contract_violations


def test_schedule_create_refuses_a_name_in_use(kfp_server, package, capsys):
    argv = ["--package", package, "--name", "n", "--every", "1h", "--param", "source=s"]
    assert schedule(capsys, kfp_server, "create", *argv)[0] == 0
    code, _, err = schedule(capsys, kfp_server, "create", *argv)
    assert code == 2
    assert "a schedule named 'n' exists" in one_line_error(err)
    assert len(kfp_server.state.recurring_runs) == 1


@pytest.mark.parametrize(
    "cron, message",
    [
        ("0 3 * *", "expected 5 fields"),
        ("61 * * * *", "minute field '61': 61 is outside 0-59"),
        ("0 3 * * 7", "day-of-week field '7': 7 is outside 0-6"),
        ("0 3 * * mon-fry", "'fry' is not a number or a name"),
        ("*/0 * * * *", "step '0' is not a positive integer"),
    ],
)
def test_schedule_create_rejects_an_invalid_cron_locally(
    kfp_server, package, capsys, cron, message
):
    code, _, err = schedule(
        capsys, kfp_server, "create", "--package", package, "--name", "n", "--cron", cron,
        "--param", "source=s",
    )  # fmt: skip
    assert code == 2
    line = one_line_error(err)
    assert line.startswith("tfpipes schedule: error: --cron") and message in line
    assert kfp_server.exchanges == []


@pytest.mark.parametrize(
    "every, message",
    [("6", "expected a duration"), ("0s", "at least 1s"), ("1w", "expected a duration")],
)
def test_schedule_create_rejects_a_bad_interval(kfp_server, package, capsys, every, message):
    code, _, err = schedule(
        capsys, kfp_server, "create", "--package", package, "--name", "n", "--every", every,
        "--param", "source=s",
    )  # fmt: skip
    assert code == 2
    assert message in one_line_error(err)


def test_schedule_actions_on_an_unknown_schedule(kfp_server, capsys):
    for action in ("enable", "disable", "delete"):
        code, _, err = schedule(capsys, kfp_server, action, "ghost")
        assert code == 2
        assert "no schedule named or with ID 'ghost'" in one_line_error(err)


def test_cron_and_interval_conversions():
    from tfpipes_pipelines.schedule_syntax import format_interval, parse_interval, to_kfp_cron

    assert to_kfp_cron("0 3 * * *") == "0 0 3 * * *"
    assert to_kfp_cron(" 30  0 3 * * MON-FRI ") == "30 0 3 * * MON-FRI"
    assert to_kfp_cron("*/15 9-17 * jan,jul ?") == "0 */15 9-17 * jan,jul ?"
    assert to_kfp_cron("@daily") == "@daily"
    assert parse_interval("1h30m") == 5400 and parse_interval("1d") == 86400
    assert format_interval(5400) == "1h30m" and format_interval(21600) == "6h"


# --------------------------------------------------------------------------------------------
# the test server's contract checks are live


def test_server_rejects_unknown_fields_in_a_request_body(kfp_server):
    status, body = kfp_server.request(
        "POST", f"{API}/experiments", {"display_name": "x", "colour": "red"}
    )
    assert status == 400
    assert body["code"] == 3 and "'colour' was unexpected" in body["message"]
    status, body = kfp_server.request(
        "POST", f"{API}/experiments", {"display_name": "x", "storage_state": "GONE"}
    )
    assert status == 400 and "'GONE' is not one of" in body["message"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_server_reads_requests_as_protojson_does(kfp_server, package):
    import kfp

    pipeline = kfp.Client(host=kfp_server.url).upload_pipeline(package, pipeline_name="p")
    # lowerCamelCase field names are protojson too; parameter names (map keys) stay as given.
    status, body = kfp_server.request(
        "POST",
        f"{API}/runs",
        {
            "displayName": "camel",
            "pipelineVersionReference": {"pipelineId": pipeline.pipeline_id},
            "runtimeConfig": {"parameters": {"source": "s", "train_steps": 3}},
        },
    )
    assert status == 200, body
    assert body["display_name"] == "camel"
    assert body["runtime_config"]["parameters"] == {"source": "s", "train_steps": 3}
    # An int64 may be a number or a decimal string, nothing else.
    status, body = kfp_server.request(
        "POST", f"{API}/recurringruns", {"display_name": "x", "max_concurrency": "ten"}
    )
    assert status == 400 and "'ten' does not match" in body["message"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_server_rejects_what_the_real_server_rejects(kfp_server, package):
    import kfp

    client = kfp.Client(host=kfp_server.url)
    pipeline = client.upload_pipeline(package, pipeline_name="p")
    ref = {"pipeline_id": pipeline.pipeline_id}

    status, body = kfp_server.request("POST", f"{API}/runs", {"display_name": "no source"})
    assert status == 400 and "pipeline version reference" in body["message"]

    status, body = kfp_server.request(
        "POST",
        f"{API}/runs",
        {"display_name": "r", "experiment_id": "nope", "pipeline_version_reference": ref},
    )
    assert status == 404 and body["code"] == 5

    status, body = kfp_server.request(
        "POST",
        f"{API}/runs",
        {"display_name": "r", "pipeline_version_reference": ref,
         "runtime_config": {"parameters": {"source": "s", "bogus": 1}}},
    )  # fmt: skip
    assert status == 400 and "Unrecognized input parameter: bogus" in body["message"]

    recurring = {"display_name": "r", "pipeline_version_reference": ref, "max_concurrency": "1"}
    for cron in ("1 * * ", "0 0 3 * * 8"):
        status, body = kfp_server.request(
            "POST",
            f"{API}/recurringruns",
            {**recurring, "trigger": {"cron_schedule": {"cron": cron}}},
        )
        assert status == 400 and "Schedule cron is not a supported format" in body["message"]
    status, body = kfp_server.request(
        "POST",
        f"{API}/recurringruns",
        {
            **recurring,
            "max_concurrency": "11",
            "trigger": {"periodic_schedule": {"interval_second": "60"}},
        },
    )
    assert status == 400 and "at most 10" in body["message"]
    status, body = kfp_server.request(
        "POST",
        f"{API}/recurringruns",
        {
            **recurring,
            "trigger": {"periodic_schedule": {"interval_second": "60", "start_time": "tomorrow"}},
        },
    )
    assert status == 400 and "date-time" in body["message"]

    status, body = kfp_server.request("GET", f"{API}/recurringruns/nope")
    assert status == 404


def test_server_requires_the_token_once_set(kfp_server):
    kfp_server.require_token("t")
    assert kfp_server.request("GET", f"{API}/healthz", headers={"Authorization": ""})[0] == 401
    assert (
        kfp_server.request("GET", f"{API}/healthz", headers={"Authorization": "Bearer x"})[0] == 403
    )
    assert kfp_server.request("GET", f"{API}/healthz")[0] == 200


def test_server_catches_its_own_contract_violations(kfp_server, monkeypatch):
    def bad_healthz(args, query, body):
        return {"multi_user": "no", "extra": 1}

    monkeypatch.setattr(kfp_server.handlers, "HealthzService_GetHealthz", bad_healthz)
    status, body = kfp_server.request("GET", f"{API}/healthz")
    assert status == 500 and "breaks the contract" in body["message"]
    assert len(kfp_server.contract_violations) == 1
    assert "'extra' was unexpected" in kfp_server.contract_violations[0]
    kfp_server.contract_violations.clear()  # seen; the fixture would fail the test otherwise
