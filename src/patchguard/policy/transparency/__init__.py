"""The exception ledger as a transparency log (RFC 6962 / RFC 9162 Merkle tree, C2SP formats).

Pure code: `merkle` (tree hashes, inclusion and consistency proofs), `note` (C2SP signed-note,
ed25519 and cosignature/v1 keys), `checkpoint` (C2SP tlog-checkpoint, cosignatures, split-view
checks), `tiles` (C2SP tlog-tiles paths and contents), `findings` (a split view as a critical
finding). With I/O: `store` (checkpoints in the ledger's database), `publish` (a static
tlog-tiles directory, proofs), `client` (verify and watch a published log), `witness` and
`serve` (cosign checkpoints, locally or over HTTP), and `cli`.
"""


class TransparencyError(Exception):
    """A malformed or unverifiable note, checkpoint, tile or proof; str() is one line."""
