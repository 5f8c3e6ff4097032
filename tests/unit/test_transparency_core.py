"""The transparency log's pure core against published vectors (RFC 6962 trees and proofs from
the Certificate Transparency test data, golang.org/x/mod/sumdb/note keys and signatures, the
C2SP tlog-tiles path examples) and against hypothesis-generated trees and tamperings."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from patchguard.policy.transparency import merkle, note, tiles
from patchguard.policy.transparency.checkpoint import (
    Checkpoint,
    SplitView,
    check_consistent,
    cosign,
    open_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    verify_cosigned,
)
from patchguard.policy.transparency.merkle import MemoryTree, ProofError, leaf_hash
from patchguard.policy.transparency.note import COSIGNATURE, ED25519, NoteError, Signer
from patchguard.signing import HostKey

# RFC 6962 test data (certificate-transparency, transparency-dev/merkle testonly)
CT_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
             "5051525354555657", "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
CT_CONSISTENCY = [
    (2, 8, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip

# golang.org/x/mod/sumdb/note note_test.go
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
QUOTE = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"  # noqa: E501
ENOCH_SIG = "— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"  # noqa: E501


def ct_tree(n: int) -> MemoryTree:
    return MemoryTree([leaf_hash(d) for d in CT_LEAVES[:n]])


def test_roots_are_rfc6962s() -> None:
    for n, root in enumerate(CT_ROOTS):
        assert ct_tree(n).root().hex() == root


def test_inclusion_proofs_are_rfc6962s() -> None:
    tree = ct_tree(8)
    for index, size, expected in CT_INCLUSION:
        proof = tree.inclusion_proof(index, size)
        assert [h.hex() for h in proof] == expected
        root = bytes.fromhex(CT_ROOTS[size])
        merkle.verify_inclusion(leaf_hash(CT_LEAVES[index]), index, size, proof, root)


def test_consistency_proofs_are_rfc6962s() -> None:
    tree = ct_tree(8)
    for old, new, expected in CT_CONSISTENCY:
        proof = tree.consistency_proof(old, new)
        assert [h.hex() for h in proof] == expected
        old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
        merkle.verify_consistency(old, new, old_root, new_root, proof)


def test_degenerate_consistency() -> None:
    root4, root5 = ct_tree(4).root(), ct_tree(5).root()
    merkle.verify_consistency(4, 4, root4, root4, [])
    merkle.verify_consistency(0, 5, merkle.EMPTY_ROOT, root5, [])
    with pytest.raises(ProofError, match="two different roots for the same size 4"):
        merkle.verify_consistency(4, 4, root4, root5, [])
    with pytest.raises(ProofError, match="must be empty"):
        merkle.verify_consistency(4, 4, root4, root4, [root4])
    with pytest.raises(ProofError, match="cannot extend"):
        merkle.verify_consistency(5, 4, root5, root4, [])
    with pytest.raises(ProofError, match="not 32 bytes"):
        merkle.verify_consistency(2, 4, root4[:31], root4, [root4])


def leaves(n: int, salt: int = 0) -> list[bytes]:
    return [leaf_hash(b"entry %d %d" % (salt, i)) for i in range(n)]


sizes = st.integers(min_value=1, max_value=600)


@settings(max_examples=60, deadline=None)
@given(size=sizes, data=st.data())
def test_every_inclusion_proof_verifies_and_a_changed_leaf_fails(
    size: int, data: st.DataObject
) -> None:
    tree = MemoryTree(leaves(size))
    index = data.draw(st.integers(0, size - 1))
    proof, root = tree.inclusion_proof(index), tree.root()
    merkle.verify_inclusion(tree.complete(0, index), index, size, proof, root)
    with pytest.raises(ProofError):
        merkle.verify_inclusion(leaf_hash(b"changed"), index, size, proof, root)
    if size > 1:  # the same leaf claimed at another place
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
        with pytest.raises(ProofError):
            merkle.verify_inclusion(tree.complete(0, index), other, size, proof, root)
    if proof:
        with pytest.raises(ProofError):
            merkle.verify_inclusion(tree.complete(0, index), index, size, proof[:-1], root)
        with pytest.raises(ProofError):
            merkle.verify_inclusion(tree.complete(0, index), index, size, [*proof, root], root)


@settings(max_examples=60, deadline=None)
@given(new=sizes, data=st.data())
def test_every_consistency_proof_verifies_and_a_rewritten_history_fails(
    new: int, data: st.DataObject
) -> None:
    old = data.draw(st.integers(0, new))
    tree = MemoryTree(leaves(new))
    proof = tree.consistency_proof(old, new)
    merkle.verify_consistency(old, new, tree.root(old), tree.root(new), proof)
    if old == 0:
        return
    changed = data.draw(st.integers(0, old - 1))
    forked = leaves(new)
    forked[changed] = leaf_hash(b"rewritten")
    other = MemoryTree(forked)  # a history that differs before `old`
    with pytest.raises(ProofError):
        merkle.verify_consistency(old, new, tree.root(old), other.root(new), proof)
    with pytest.raises(ProofError):  # the forked log's own proof does not link it either
        other_proof = other.consistency_proof(old, new)
        merkle.verify_consistency(old, new, tree.root(old), other.root(new), other_proof)
    if proof:
        with pytest.raises(ProofError):
            merkle.verify_consistency(old, new, tree.root(old), tree.root(new), proof[:-1])


@settings(max_examples=30, deadline=None)
@given(size=st.integers(2, 300), data=st.data())
def test_reordered_or_truncated_logs_do_not_verify(size: int, data: st.DataObject) -> None:
    original = leaves(size)
    i = data.draw(st.integers(0, size - 2))
    swapped = [*original]
    swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    tree, root = MemoryTree(original), MemoryTree(original).root()
    assert MemoryTree(swapped).root() != root
    truncated = MemoryTree(original[:-1])
    with pytest.raises(ProofError):  # a shorter log is no extension of the longer one
        merkle.verify_consistency(size, size - 1, root, truncated.root(), [])
    with pytest.raises(ProofError):  # an extension without a proof
        merkle.verify_consistency(size - 1, size, truncated.root(), root, [])
    assert tree.root(size - 1) == truncated.root()


def peter() -> Signer:
    seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])[1:]
    return Signer("PeterNeumann", ED25519, HostKey(Ed25519PrivateKey.from_private_bytes(seed)))


def test_go_note_vectors() -> None:
    signer = peter()
    assert signer.verifier.vkey == PETER_VKEY
    assert note.sign(QUOTE, [signer]).encode().decode() == QUOTE + "\n" + PETER_SIG
    both = (QUOTE + "\n" + PETER_SIG + ENOCH_SIG).encode()
    opened = note.open_note(both, [note.parse_vkey(PETER_VKEY)])  # Enoch's is unknown: ignored
    assert opened.text == QUOTE and len(opened.signatures) == 2
    note.open_note(both, [note.parse_vkey(ENOCH_VKEY), note.parse_vkey(PETER_VKEY)])
    with pytest.raises(NoteError, match="not signed by a known key"):
        note.open_note((QUOTE + "\n" + ENOCH_SIG).encode(), [note.parse_vkey(PETER_VKEY)])


@pytest.mark.parametrize(
    ("vkey", "why"),
    [
        ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==", "base64"),
        ("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "ed25519"),
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "space"),
        ("PeterNeumann+c74f20a3", "wrong number"),
        ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "lowercase hex"),
        ("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", "base64"),
    ],
)
def test_bad_vkeys(vkey: str, why: str) -> None:
    with pytest.raises(NoteError, match=why):
        note.parse_vkey(vkey)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (b"no signatures\n", "no blank line"),
        (b"text\n\n", "no signature lines"),
        (b"text\n\n- PeterNeumann AAAAAAA=\n", "em dash"),
        (b"text\xff\n\n", "not UTF-8"),
        (b"te\x01xt\n\n", "control character"),
        (b"text\n\n\xe2\x80\x94 PeterNeumann x08go\n", "not base64"),
        (b"text\n\n\xe2\x80\x94 PeterNeumann AAAA\n", "too short"),
        (b"text\n\n\xe2\x80\x94 PeterNeumann AAAAAAA=", "newline"),
        (b"x" * (note.MAX_NOTE + 1), "over"),
    ],
)
def test_malformed_notes(message: bytes, why: str) -> None:
    with pytest.raises(NoteError, match=why):
        note.open_note(message, [note.parse_vkey(PETER_VKEY)])


def test_a_known_key_whose_signature_fails_rejects_the_note() -> None:
    forged = (QUOTE.replace("problem", "solution") + "\n" + PETER_SIG).encode()
    with pytest.raises(NoteError, match="does not verify"):
        note.open_note(forged, [note.parse_vkey(PETER_VKEY)])


def test_checkpoint_text_and_parse() -> None:
    root = bytes.fromhex(CT_ROOTS[8])
    text = f"example.com/log\n8\n{base64.b64encode(root).decode()}\nextra\n"
    assert parse_checkpoint(text) == Checkpoint("example.com/log", 8, root, ("extra",))
    assert parse_checkpoint(text).text == text
    for bad, why in [
        ("example.com/log\n08\nAA==\n", "decimal"),
        ("example.com/log\n8\n", "one per line"),
        ("\n8\n" + base64.b64encode(root).decode() + "\n", "origin"),
        ("o\n8\nAAAA\n", "not 32"),
        ("o\n9223372036854775808\n" + base64.b64encode(root).decode() + "\n", "below 2\\^63"),
        ("o\n8\n" + base64.b64encode(root).decode() + "\n\n", "empty extension"),
    ]:
        with pytest.raises(NoteError, match=why):
            parse_checkpoint(bad)


def keys(name: str, kind: int) -> Signer:
    return Signer(name, kind, HostKey.generate())


def test_cosignature_message_is_c2sps() -> None:
    witness = keys("witness.example.com/w1", COSIGNATURE)
    log = keys("example.com/behind-the-sofa", ED25519)
    root = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    signed = sign_checkpoint(Checkpoint("example.com/behind-the-sofa", 20852163, root), log)
    cosigned = cosign(signed, witness, 1679315147)
    raw = cosigned.note.signatures[-1].signature
    assert raw[:8] == (1679315147).to_bytes(8, "big") and len(raw) == 72
    message = (
        b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\n"
        b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    )
    from patchguard.signing import verify_signature

    assert verify_signature(witness.verifier.public_key, message, raw[8:])
    assert witness.verifier.vkey.split("+")[2].startswith(base64.b64encode(b"\x04").decode()[:1])


def test_quorum_of_witnesses() -> None:
    log = keys("log.example", ED25519)
    w = [keys(f"w{i}.example", COSIGNATURE) for i in range(3)]
    signed = sign_checkpoint(Checkpoint("log.example", 8, ct_tree(8).root()), log)
    once = cosign(signed, w[0], 100)
    twice = cosign(once, w[1], 101)
    verifiers = [s.verifier for s in w]
    verify_cosigned(twice.encoded, log.verifier, verifiers, 2)
    with pytest.raises(NoteError, match="cosigned by 1 of the 2 witnesses needed"):
        verify_cosigned(once.encoded, log.verifier, verifiers, 2)
    with pytest.raises(NoteError, match="cosigned by 1 of the 2"):  # one witness counts once
        verify_cosigned(cosign(once, w[0], 102).encoded, log.verifier, verifiers + verifiers, 2)
    with pytest.raises(NoteError, match="not signed by a known key"):
        verify_cosigned(twice.encoded, keys("log.example", ED25519).verifier, verifiers, 2)
    with pytest.raises(NoteError, match="cannot be met"):
        verify_cosigned(twice.encoded, log.verifier, verifiers[:1], 2)


def test_split_views() -> None:
    log = keys("log.example", ED25519)
    honest, forked = MemoryTree(leaves(20)), MemoryTree(leaves(20, salt=1))
    at = [
        sign_checkpoint(Checkpoint("log.example", n, t.root(n)), log)
        for t, n in ((honest, 10), (forked, 10), (forked, 20), (honest, 20))
    ]
    check_consistent(at[0], at[3], honest.consistency_proof(10, 20))
    with pytest.raises(SplitView, match="same size") as caught:
        check_consistent(at[0], at[1], [])
    assert caught.value.first == at[0].encoded and caught.value.second == at[1].encoded
    with pytest.raises(SplitView, match="does not extend"):
        check_consistent(at[0], at[2], forked.consistency_proof(10, 20))
    with pytest.raises(SplitView, match="went back"):
        check_consistent(at[3], at[0], [])
    opened = open_checkpoint(at[2].encoded, log.verifier)
    assert opened.checkpoint.size == 20


def test_tile_paths_are_c2sps() -> None:
    assert tiles.encode_index(1234067) == "x001/x234/067"
    assert tiles.encode_index(5) == "005" and tiles.encode_index(1000) == "x001/000"
    assert tiles.Tile(0, 1234067, 8).path == "tile/0/x001/x234/067.p/8"
    assert tiles.Tile(-1, 3, 256).path == "tile/entries/003"
    # the spec's example: a tree of 70,000 entries
    shape = [(t.level, t.width) for t in tiles.tiles_for(70_000)]
    assert shape.count((0, 256)) == 273 and (0, 112) in shape
    assert (1, 256) in shape and (1, 17) in shape and (2, 1) in shape and len(shape) == 277
    assert [(t.level, t.width) for t in tiles.tiles_for(256)] == [(0, 256), (1, 1)]


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 2000), data=st.data())
def test_proofs_from_tiles_match_the_tree(size: int, data: st.DataObject) -> None:
    tree = MemoryTree(leaves(size))
    files = {t.path: tiles.tile_data(tree, t) for t in tiles.tiles_for(size)}
    fetched: list[str] = []

    def fetch(path: str, limit: int) -> bytes:
        fetched.append(path)
        return files[path][:limit]

    source = tiles.TileSource(fetch, size)
    assert merkle.subtree_root(source, 0, size) == tree.root()
    old = data.draw(st.integers(0, size))
    assert merkle.consistency_proof(source, old, size) == tree.consistency_proof(old)
    index = data.draw(st.integers(0, size - 1))
    assert merkle.inclusion_proof(source, index, size) == tree.inclusion_proof(index)
    assert len(fetched) == len(set(fetched))  # each tile fetched once


def test_bundles_round_trip_and_reject_bad_lengths() -> None:
    entries = [b"", b"a", b"x" * 300]
    data = tiles.encode_bundle(entries)
    assert tiles.decode_bundle(data, 3, "b") == entries
    for bad, why in [(data[:-1], "cut short"), (data + b"\x00", "truncated"), (data, "not 4")]:
        with pytest.raises(tiles.TileError, match=why):
            tiles.decode_bundle(bad, 4 if why == "not 4" else 3, "b")
    with pytest.raises(tiles.TileError, match="does not fit"):
        tiles.encode_bundle([b"x" * 65536])


def test_vkeys_round_trip_whatever_base64_their_keys_spell() -> None:
    for kind in (ED25519, COSIGNATURE) * 40:  # keys with '+' and '/' in their base64 too
        verifier = keys("log.example/a", kind).verifier
        assert note.parse_vkey(verifier.vkey) == verifier


def test_a_split_view_is_a_critical_finding_with_both_notes() -> None:
    from patchguard.findings import Disposition, Severity
    from patchguard.policy.transparency.findings import split_view_finding

    log = keys("log.example", ED25519)
    one, two = MemoryTree(leaves(4)), MemoryTree(leaves(4, salt=1))
    a = sign_checkpoint(Checkpoint("log.example", 4, one.root()), log)
    b = sign_checkpoint(Checkpoint("log.example", 4, two.root()), log)
    with pytest.raises(SplitView) as caught:
        check_consistent(a, b, [])
    finding = split_view_finding(caught.value)
    assert finding.severity == Severity.CRITICAL and finding.disposition == Disposition.TAMPERING
    assert finding.evidence["checkpoint_seen"] == a.encoded.decode()
    assert finding.evidence["checkpoint_now"] == b.encoded.decode()
    for key in ("checkpoint_seen", "checkpoint_now"):  # the evidence verifies as it stands
        value = finding.evidence[key]
        assert isinstance(value, str)
        open_checkpoint(value.encode(), log.verifier)
