"""Where the KFP session's credentials may go, and how its requests travel.

Rules, enforced for both HTTP paths of :class:`tfpipes_pipelines.kfp_session.KfpSession` (its
own ``urllib`` health check and every ``kfp.Client`` request, made by kfp_server_api through
urllib3):

- The bearer token goes to the ``--host`` the user named and nowhere else. No redirect is ever
  followed: urllib copies ``Authorization`` onto a redirect to any origin (https -> http
  included), and a KFP API never redirects, so an answer 3xx is one line naming where it
  pointed (:class:`RedirectRefused`), and nothing is sent there.
- A token crosses the network in the clear only when the user says so: with a token, an
  ``http://`` host that is not loopback (127.0.0.0/8, ::1, localhost) needs
  ``allow_insecure_http`` (``--allow-insecure-http``).
- A token is one line of printable ASCII; anything else (a newline, a control character) is
  refused with a message that names where the token came from, never the token.
- The Kubernetes service-account token (the file named by $KF_PIPELINES_SA_TOKEN_PATH) is read
  only when the user asks for in-cluster auth, or when the host is the in-cluster address of
  the KFP API (``ml-pipeline.<namespace>.svc[.cluster.local]``): it is meant for that server.
- Every request is bounded by the session's timeout, given to this session's own HTTP client
  (the process-wide socket default is never touched).
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import urllib3

from tfpipes.errors import UserError

TOKEN_ENV = "KF_PIPELINES_TOKEN"
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
# Where KFP projects the service-account token into a pod (kfp.Client's default too).
DEFAULT_SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
AUTH_HINT = f"pass a token with --token, --token-file, or {TOKEN_ENV}"

_IN_CLUSTER_HOST = re.compile(
    r"^ml-pipeline\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\.svc(\.cluster\.local)?\.?$"
)
# RFC 6750 b64token and every real token format (JWT, OAuth access tokens) are printable ASCII.
_TOKEN = re.compile(r"^[\x21-\x7e]+$")


def is_loopback(hostname: str) -> bool:
    """Whether ``hostname`` is this machine by its name alone: localhost or a loopback IP."""
    name = hostname.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_in_cluster_host(hostname: str) -> bool:
    """Whether ``hostname`` is the KFP API's in-cluster service name."""
    return bool(_IN_CLUSTER_HOST.match(hostname.lower()))


def check_token(token: str, source: str) -> str:
    """``token`` without surrounding whitespace; UserError naming ``source`` (never the token)
    if it is empty or holds anything but printable ASCII (a newline would split the header)."""
    token = token.strip()
    if not token:
        raise UserError(f"{source}: the token is empty")
    if not _TOKEN.match(token):
        bad = next(i for i, c in enumerate(token) if not "\x21" <= c <= "\x7e")
        raise UserError(
            f"{source}: the token holds a newline, a space, a control or a non-ASCII character"
            f" (at character {bad + 1}); a bearer token is one line of printable ASCII"
        )
    return token


def resolve_token(
    host: str,
    token: str | None = None,
    token_file: str | None = None,
    in_cluster_auth: bool = False,
    environ: dict | None = None,
) -> str | None:
    """The bearer token to send to ``host``, or None for kfp.Client's own defaults.

    Order: ``--token``, ``--token-file``, the service-account token file when
    ``in_cluster_auth`` (``--in-cluster-auth``), $KF_PIPELINES_TOKEN, and last the
    service-account token file if ``host`` is the in-cluster KFP address. The service-account
    file is $KF_PIPELINES_SA_TOKEN_PATH, else KFP's projected path. UserError (exit 2) for an
    unreadable or empty file or a malformed token; no message ever holds the token.
    """
    env = os.environ if environ is None else environ
    if token:
        return check_token(token, "--token")
    if token_file:
        return _read_token(token_file, "--token-file")
    sa_path = env.get(SA_TOKEN_PATH_ENV) or DEFAULT_SA_TOKEN_PATH
    sa_source = "--in-cluster-auth: the service-account token" + (
        f" (${SA_TOKEN_PATH_ENV})" if env.get(SA_TOKEN_PATH_ENV) else ""
    )
    if in_cluster_auth:
        return _read_token(sa_path, sa_source)
    if env.get(TOKEN_ENV):
        return check_token(env[TOKEN_ENV], f"${TOKEN_ENV}")
    hostname = urllib.parse.urlsplit(host).hostname or ""
    if is_in_cluster_host(hostname) and Path(sa_path).is_file():
        return _read_token(sa_path, f"{sa_path} (the service-account token)")
    return None


def _read_token(path: str, source: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: the token file ({source}) is not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the token file ({source}): {e.strerror}") from None
    if not text.strip():
        raise UserError(f"{path}: the token file ({source}) is empty")
    return check_token(text, f"{path} ({source})")


def check_transport(host: str, token: str | None, allow_insecure_http: bool = False) -> None:
    """UserError unless sending ``token`` to ``host`` keeps it from eavesdroppers: https, or
    http to loopback, or http anywhere with ``allow_insecure_http``. No token: nothing to keep."""
    url = urllib.parse.urlsplit(host)
    if not token or url.scheme != "http" or allow_insecure_http:
        return
    if not is_loopback(url.hostname or ""):
        raise UserError(
            f"--host {host}: plain http:// to another machine would send the token"
            " unencrypted; use https://, a port-forward to localhost, or pass"
            " --allow-insecure-http if the network between is trusted"
        )


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, the port made explicit: what "the same origin" compares."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


class RedirectRefused(Exception):
    """The server answered a redirect, which the session never follows (see the module doc)."""

    def __init__(self, url: str, status: int, location: str) -> None:
        target = urllib.parse.urlsplit(urllib.parse.urljoin(url, location))
        # Scheme, host and path only: a query may carry the other side's state.
        shown = urllib.parse.urlunsplit((target.scheme, target.netloc, target.path, "", ""))
        where = "the same server" if origin(url) == origin(shown) else "another origin"
        super().__init__(
            f"HTTP {status} redirect to {shown} ({where}); nothing was sent there: the token"
            " goes only to --host, so give the URL the KFP API answers at (https:// for a"
            " gateway), without redirects"
        )


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise RedirectRefused(req.full_url, code, newurl)


def probe_opener() -> urllib.request.OpenerDirector:
    """A urllib opener for the health check: no proxy (like kfp.Client), no redirects."""
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), _RefuseRedirects())


class _NoRedirectRetry(urllib3.Retry):
    """urllib3's default retries (3 on connection and read errors) but no redirect: the first
    3xx raises RedirectRefused before anything is sent to where it points."""

    def increment(self, method=None, url=None, response=None, error=None, **kwargs):
        if response is not None and response.get_redirect_location():
            raise RedirectRefused(url or "", response.status, response.get_redirect_location())
        return super().increment(method, url, response=response, error=error, **kwargs)


def no_redirects(config: Any) -> Any:
    """``config`` (a kfp_server_api.Configuration) made to refuse redirects: its clients'
    connection pools retry as urllib3 does by default but raise RedirectRefused at a 3xx."""
    config.retries = _NoRedirectRetry(3, redirect=0)
    return config


def bound_requests(api_client: Any, timeout: float) -> None:
    """Make every request of a ``kfp_server_api.ApiClient`` that names no timeout of its own
    wait at most ``timeout`` seconds to connect and ``timeout`` seconds for each read.

    Only this client changes; the process-wide socket default stays as it is (other code in
    the process, a KFP component's own storage client, keeps its own timeouts). urllib3 retries
    a timed-out GET a few times, so a hung server is given up after a few times ``timeout``.
    """
    rest = api_client.rest_client
    request = rest.request
    # A (connect, read) pair: kfp_server_api turns a bare int into a total, a float into nothing.
    bound = (timeout, timeout)

    def request_with_timeout(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or bound, **kwargs)

    rest.request = request_with_timeout
