"""§3.1 the file-system store's mapping of blob names to files.

This is the one place where the reader trusts the document about the
store rather than the format: it reads files, as the fs store keeps them.
"""
import os
import re

_BLOB_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def blob_path(root, blob):
    """The file holding `blob`: a last component ending in 7+ digits lives
    in the directory `.` + all but its last six digits, as those six."""
    parts = blob.split("/")
    last = parts[-1]
    if re.search(r"[0-9]{7}$", last):
        return os.path.join(root, *parts[:-1], "." + last[:-6], last[-6:])
    return os.path.join(root, *parts)


def list_blobs(root, prefix):
    """{blob name: file} for the blobs directly under `prefix/` (one level:
    every blob of a ledger is `<ledger>/<name>`)."""
    base, out = os.path.join(root, prefix), {}
    for fn in sorted(os.listdir(base)):
        path = os.path.join(base, fn)
        if fn.startswith("."):
            # A window directory `.X` (X ending in a digit) holds X + NNNNNN.
            if os.path.isdir(path) and fn[-1].isdigit():
                for inner in sorted(os.listdir(path)):
                    if re.fullmatch(r"[0-9]{6}", inner) and os.path.isfile(os.path.join(path, inner)):
                        out[f"{prefix}/{fn[1:]}{inner}"] = os.path.join(path, inner)
            continue  # otherwise a companion file (.blocks, .lock, .tmp-*): not a blob
        if re.search(r"[0-9]{7}$", fn) or not _BLOB_COMPONENT.fullmatch(fn) or not os.path.isfile(path):
            continue
        out[f"{prefix}/{fn}"] = path
    return out
