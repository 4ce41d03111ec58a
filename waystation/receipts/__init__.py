"""The receipts domain in one room: what ran, chained, kept in a Merkle tree, signed and proved.

    chain.py        receipts themselves: canonical JSON, the SHA-256 chain, append and verify
    merkle.py       RFC 6962 hashing: leaves, roots, inclusion and consistency proofs (pure)
    tree.py         the Merkle tree kept in SQLite beside the receipts, and read back
    checkpoints.py  signing keys and signed notes (C2SP's signed-note format)
    proofs.py       checkpoints and proofs made from the database and checked against a key

This package imports nothing itself: db.py runs the tree's migration (tree.SCHEMA, tree.backfill)
without loading chain.py, which imports db.py back. tree.py and merkle.py never import db.py at
run time (an import contract keeps that), so the two never form a circle.
"""
