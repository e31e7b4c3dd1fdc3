"""An independent reader of the bi-ledger storage format, version 1.

Written from ledger-format.md alone, never from the Rust sources, so that
agreement between the two is evidence that the document is enough to read
the tool's ledgers. Section numbers in comments (`§5.1`) are the document's.
"""
