"""WSGI app for the end-to-end tests (tests/e2e_http_backends.rs).

Answers every request with its WSGI environ as JSON: a flat object of strings,
sorted, one key per line (json.dumps(..., sort_keys=True, indent=0)). It reads
the whole request body from wsgi.input first and adds:

  BODY_LEN       bytes read from wsgi.input
  BODY_SHA256    their SHA-256, lowercase hex
  APP_PID        the serving process's pid

Environ values are native strings holding latin-1 decoded bytes (PEP 3333);
they are shown as the UTF-8 text those bytes spell (what a framework shows),
so "/caf%C3%A9" arrives as PATH_INFO "/café". HTTPS_CLIENT_CERTIFICATE (DER,
binary) is replaced by HTTPS_CLIENT_CERTIFICATE_SHA256 and _LEN.

Served by a real uWSGI (`uwsgi --plugin python3 --wsgi-file echo.py`) and by
gunicorn (`gunicorn echo:application`).
"""

import hashlib
import json
import os


def _text(value):
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        try:
            raw = value.encode("latin-1")
        except UnicodeEncodeError:
            return value
    else:
        return None
    return raw.decode("utf-8", "replace")


def application(environ, start_response):
    stream = environ["wsgi.input"]
    digest = hashlib.sha256()
    length = 0
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        digest.update(chunk)
        length += len(chunk)

    out = {}
    for key, value in environ.items():
        if key == "HTTPS_CLIENT_CERTIFICATE":
            raw = value if isinstance(value, bytes) else value.encode("latin-1")
            out[key + "_SHA256"] = hashlib.sha256(raw).hexdigest()
            out[key + "_LEN"] = str(len(raw))
            continue
        text = _text(value)
        if text is not None:
            out[key] = text
    out["BODY_LEN"] = str(length)
    out["BODY_SHA256"] = digest.hexdigest()
    out["APP_PID"] = str(os.getpid())

    body = json.dumps(out, sort_keys=True, indent=0).encode("ascii")
    start_response(
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]
