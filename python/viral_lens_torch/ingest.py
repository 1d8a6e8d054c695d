"""Optional streaming of capture progress to a viral-lens dashboard (disk stays the source of truth).

After every batch the writer POSTs ``{"run": ..., "step": ..., "manifest": {...}}`` as JSON to
``<ingest_url>/api/ingest`` with ``Authorization: Bearer <token>``. Any failure (server down, timeout, HTTP
error) is a :class:`IngestWarning`; the capture on disk is never affected.
"""

import json
import urllib.error
import urllib.request
import warnings


class IngestWarning(UserWarning):
    """A POST to the dashboard ingest endpoint failed (the capture itself continues)."""


class IngestClient:
    def __init__(self, ingest_url, token=None, run=None, step=None, timeout=5.0):
        self.url = ingest_url.rstrip("/") + "/api/ingest"
        self.token = token
        self.run = run
        self.step = step
        self.timeout = timeout
        self.failures = 0
        self.posted = 0

    def post(self, manifest):
        body = json.dumps({"run": self.run, "step": self.step, "manifest": manifest}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer %s" % self.token
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
            self.posted += 1
            return True
        except Exception as err:  # never break the capture
            self.failures += 1
            warnings.warn("viral-lens ingest POST to %s failed (%s: %s); the capture continues on disk"
                          % (self.url, type(err).__name__, err), IngestWarning, stacklevel=2)
            return False
