"""Comparing the records read from the blobs with `bi-ledger read` output.

The JSON-lines layout is the tool's, not the format's (ledger-format.md
does not define it); what it prints must be what the blobs hold.
"""
import base64
import datetime
import json

from .prims import Fail

KNOWN = {"seq", "timestamp", "stream", "version", "type", "schema_version", "content_type", "metadata"}
_EPOCH = datetime.datetime(1970, 1, 1)


def rfc3339_us(us):
    """§2.7 timestamp as the tool prints it: UTC, six fractional digits."""
    t = _EPOCH + datetime.timedelta(microseconds=us)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}Z"


def _json(text):
    # Numbers compared as written: a reader must not round what was stored.
    return json.loads(text, parse_int=str, parse_float=str)


class ReadOutput:
    def __init__(self, path):
        self.path = path
        self.file = open(path, encoding="utf-8")
        self.line_no = 0
        self.count = 0

    def _next_line(self):
        for line in self.file:
            self.line_no += 1
            if line.strip():
                return line
        return None

    def check(self, r, blob, frame_offset):
        """The next line must be record `r` (read from the frame at
        `frame_offset` of `blob`)."""
        line = self._next_line()

        def fail(what):
            return Fail(blob, frame_offset, f"record {r.seq} vs {self.path} line {self.line_no}: {what}")

        if line is None:
            raise fail("read output ends before this record")
        try:
            got = _json(line)
        except ValueError as e:
            raise fail(f"not JSON ({e})") from None
        if not isinstance(got, dict):
            raise fail("not a JSON object")
        payload_keys = {"payload", "payload_base64"} & set(got)
        unknown = sorted(set(got) - KNOWN - payload_keys)
        if unknown:
            raise fail(f"read printed fields this reader does not know: {', '.join(unknown)}")
        if len(payload_keys) != 1:
            raise fail("expected exactly one of 'payload' and 'payload_base64'")
        want = {"seq": str(r.seq), "timestamp": rfc3339_us(r.ts), "stream": r.stream,
                "version": str(r.version), "type": r.type, "schema_version": str(r.schema),
                "content_type": r.content_type, "metadata": dict(r.metadata)}
        for k, v in want.items():
            if got.get(k) != v:
                raise fail(f"{k}: read printed {got.get(k)!r}, the blobs hold {v!r}")
        if "payload_base64" in got:
            try:
                ok = base64.b64decode(got["payload_base64"], validate=True) == r.payload
            except (ValueError, TypeError):
                ok = False
            if not ok:
                raise fail(f"payload_base64 is not the {len(r.payload)} payload bytes held")
        else:
            try:
                held = _json(r.payload.decode("utf-8"))
            except ValueError:
                raise fail("read printed a JSON payload, but the bytes held are not JSON") from None
            if got["payload"] != held:
                raise fail(f"payload: read printed {got['payload']!r}, the blobs hold {held!r}")
        self.count += 1

    def finish(self, records):
        extra = self._next_line()
        if extra is not None:
            raise Fail(self.path, None, f"line {self.line_no}: more lines than the {records} records in the ledger")
