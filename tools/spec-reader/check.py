#!/usr/bin/env python3
"""An independent reader of bi-ledger format v1, written from ledger-format.md alone.

  check.py vectors SPEC_MD
      rebuilds and checks every test vector of the document (§13)
  check.py ledger DATA_DIR LEDGER_NAME --public-key FILE [--read-jsonl FILE]
      reads a ledger kept by the file-system store under DATA_DIR and checks
      it as a verifier (§12.5); with --read-jsonl, also compares the records
      with what `bi-ledger read` printed

Exit status: 0 all is well; 1 the first failure, one line on stderr naming
the blob (or file), the byte offset and what differed; 2 usage error;
3 an internal error of this reader (a bug here, not in the ledger).
"""
import argparse
import os
import sys
import traceback

sys.dont_write_bytecode = True  # leave no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from specreader.keys import parse_verifier_key  # noqa: E402
from specreader.ledger import LedgerCheck  # noqa: E402
from specreader.prims import Fail  # noqa: E402
from specreader.readjsonl import ReadOutput  # noqa: E402
from specreader.vectors import check_vectors  # noqa: E402


def usage_error(msg):
    print(f"check.py: {msg}", file=sys.stderr)
    sys.exit(2)


def need_file(path, what):
    if not os.path.isfile(path):
        usage_error(f"{what} {path!r} is not a file")


def cmd_vectors(args):
    need_file(args.spec, "SPEC_MD")
    with open(args.spec, encoding="utf-8") as f:
        spec = f.read()
    for line in check_vectors(spec, args.spec):
        print(line)


def cmd_ledger(args):
    if not os.path.isdir(os.path.join(args.data_dir, args.ledger)):
        usage_error(f"no ledger directory {args.ledger!r} under {args.data_dir!r}")
    need_file(args.public_key, "--public-key")
    try:
        with open(args.public_key, encoding="utf-8") as f:
            key = parse_verifier_key(f.read())
    except (ValueError, UnicodeDecodeError) as e:
        usage_error(f"--public-key {args.public_key}: {e}")
    out = None
    if args.read_jsonl is not None:
        need_file(args.read_jsonl, "--read-jsonl")
        out = ReadOutput(args.read_jsonl)
    check = LedgerCheck(args.data_dir, args.ledger, key, out)
    summary = check.run()
    for note in check.notes:
        print("note:", note)
    print(summary)


def main():
    p = argparse.ArgumentParser(description="Independent spec-only reader of bi-ledger format v1.")
    sub = p.add_subparsers(dest="command", required=True)
    v = sub.add_parser("vectors", help="check every test vector of ledger-format.md")
    v.add_argument("spec", metavar="SPEC_MD")
    v.set_defaults(run=cmd_vectors)
    g = sub.add_parser("ledger", help="read and check a ledger of the file-system store")
    g.add_argument("data_dir", metavar="DATA_DIR")
    g.add_argument("ledger", metavar="LEDGER_NAME")
    g.add_argument("--public-key", required=True, metavar="FILE", help="verifier key file (§3.5)")
    g.add_argument("--read-jsonl", metavar="FILE", help="what `bi-ledger read` printed for this ledger")
    g.set_defaults(run=cmd_ledger)
    args = p.parse_args()
    try:
        args.run(args)
    except Fail as f:
        print(f.line(), file=sys.stderr)
        sys.exit(1)
    except Exception:  # a bug here must not pass for a failure of the ledger
        traceback.print_exc()
        print("check.py: internal error", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
