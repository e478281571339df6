"""A local HTTP server speaking the part of the Hugging Face Hub API that `huggingface_hub`
uses to create a repository, upload files in a commit and download them again: enough for
`HfApi.upload_folder` and `from_pretrained("<user/name>")` pointed at it through HF_ENDPOINT.

Files are kept in memory. Every upload is "regular" (base64 inside the commit), so no LFS or
Xet storage is involved. Writes need `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)


class HubServer:
    def __init__(self, token: str):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []  # "METHOD path status", for debugging a failing test
        self.fail_with: int | None = None  # an HTTP status every write answers (a broken hub)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll: `shutdown` waits for the loop's next look, at every test's teardown.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/(preupload|commit|revision|tree)/([^/]+))?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def _card_errors(content: str) -> list[dict]:
    """What the Hub's README validation checks that a model card gets right: YAML front matter
    and a well-formed model-index (each result: task type, dataset name and type, metrics with
    type and numeric value)."""
    import yaml

    if not content.startswith("---\n"):
        return [{"message": "no YAML metadata block"}]
    try:
        meta = yaml.safe_load(content.split("---\n")[1])
    except yaml.YAMLError as err:
        return [{"message": f"invalid YAML: {err}"}]
    errors = []
    for entry in meta.get("model-index", []):
        for result in entry.get("results", []):
            if not result.get("task", {}).get("type"):
                errors.append({"message": "model-index result without task.type"})
            dataset = result.get("dataset", {})
            if not (dataset.get("name") and dataset.get("type")):
                errors.append({"message": "model-index result without dataset name and type"})
            for metric in result.get("metrics", []):
                if "type" not in metric or not isinstance(metric.get("value"), (int, float)):
                    errors.append({"message": f"bad metric {metric}"})
    return errors


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet: requests are kept in hub.requests
            pass

        # -- helpers ------------------------------------------------------------------------
        def _reply(self, status: int, body: bytes | dict = b"", headers: dict | None = None):
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if isinstance(body, dict):
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            hub.requests.append(f"{self.command} {self.path} {status}")

        def _error(self, status: int, code: str, message: str):
            headers = {"X-Error-Code": code, "X-Error-Message": message}
            self._reply(status, {"error": message}, headers)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {hub.token}":
                return True
            self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            return False

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        # -- routes -------------------------------------------------------------------------
        def do_POST(self):
            path = urlparse(self.path).path
            if hub.fail_with is not None:
                return self._error(hub.fail_with, "ServerError", "the hub is having a bad day")
            if path == "/api/repos/create":
                if not self._authorized():
                    return
                body = json.loads(self._body())
                repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
                if repo_id in hub.repos:
                    body = {"error": "repo exists", "url": f"{hub.url}/{repo_id}"}
                    return self._reply(409, body)
                private = body.get("visibility") == "private" or bool(body.get("private"))
                hub.repos[repo_id] = Repo(private=private)
                return self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                errors = _card_errors(json.loads(self._body())["content"])
                status = 400 if errors else 200
                return self._reply(status, {"errors": errors, "warnings": []})
            match = _API.match(path)
            if not match or match.group(2) not in ("preupload", "commit"):
                return self._error(404, "EntryNotFound", f"no route {path}")
            if not self._authorized():
                return
            repo = hub.repos.get(match.group(1))
            if repo is None:
                return self._error(404, "RepoNotFound", f"Repository {match.group(1)} not found")
            if match.group(2) == "preupload":
                files = json.loads(self._body())["files"]
                return self._reply(
                    200,
                    {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in files
                    ]},
                )  # fmt: skip
            for line in self._body().decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    repo.files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    repo.files.pop(item["value"]["path"], None)
            state = json.dumps(sorted(repo.files)) + str(len(repo.commits))
            oid = hashlib.sha1(state.encode()).hexdigest()
            repo.commits.append(oid)
            return self._reply(
                200,
                {"commitUrl": f"{hub.url}/{match.group(1)}/commit/{oid}", "commitOid": oid,
                 "pullRequestUrl": None},
            )  # fmt: skip

        def do_GET(self):
            path = unquote(urlparse(self.path).path)
            match = _API.match(path)
            if match and match.group(2) in (None, "revision"):
                repo = hub.repos.get(match.group(1))
                if repo is None or not repo.commits:
                    missing = f"Repository {match.group(1)} not found"
                    return self._error(404, "RepoNotFound", missing)
                return self._reply(
                    200,
                    {"id": match.group(1), "modelId": match.group(1), "sha": repo.commits[-1],
                     "private": repo.private, "siblings": [{"rfilename": f} for f in repo.files]},
                )  # fmt: skip
            if match and match.group(2) == "tree":  # the file list snapshot_download reads
                files = hub.repos[match.group(1)].files.items()
                tree = [{"type": "file", "path": f, "size": len(data),
                         "oid": hashlib.sha1(data).hexdigest()} for f, data in files]  # fmt: skip
                json_type = {"Content-Type": "application/json"}
                return self._reply(200, json.dumps(tree).encode(), json_type)
            match = _RESOLVE.match(path)
            if not match:
                return self._error(404, "EntryNotFound", f"no route {path}")
            repo_id, _revision, filename = match.groups()
            repo = hub.repos.get(repo_id)
            if repo is None or not repo.commits:
                return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
            if filename not in repo.files:
                return self._error(404, "EntryNotFound", f"{filename} does not exist")
            data = repo.files[filename]
            etag = hashlib.sha1(data).hexdigest()
            return self._reply(
                200,
                data,
                {"ETag": f'"{etag}"', "X-Repo-Commit": repo.commits[-1],
                 "Content-Type": "application/octet-stream"},
            )  # fmt: skip

        do_HEAD = do_GET

    return Handler
