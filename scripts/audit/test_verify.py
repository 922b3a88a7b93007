#!/usr/bin/env python3
"""Tests for scripts/audit/verify.py (stdlib unittest; needs `cryptography`).

Run:  .venv-audit/bin/python -m unittest scripts/audit/test_verify.py -v
(scripts/audit/verify.sh makes .venv-audit; or any python3 with `cryptography`).

The bundles here are built by this file's own tiny RFC 9162 tree builder (MTH, PATH and PROOF as
defined in RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1), not by ferrotune, and are signed with an
Ed25519 key made by `cryptography`.

Published vectors used:
- RFC 6962 tree roots for the 8 standard leaves and the consistency proofs 1->8, 6->8, 2->5, and a
  real CT log inclusion proof (leaf 848049 of 3630887): google/certificate-transparency,
  python/ct/crypto/merkle_test.py (TreeHasherTest.test_vector_hashes,
  MerkleVerifierTest.sha256_proofs / sha256_audit_path; "Test vectors lifted from the C++ branch").
- Inclusion proofs in the 8-leaf tree, consistency proof 6->7, the edge-case table and the
  corruption probes: transparency-dev/merkle, proof/verify_test.go.
- Signed note: golang/mod sumdb/note/note_test.go (TestSign / TestOpen: PeterNeumann key and
  note, EnochRoot signature) and the example in C2SP signed-note.md ("Verifier keys / Example").
"""

import base64
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import verify  # noqa: E402

H = bytes.fromhex


# ------------------------------------------------------------------------------------------
# This file's own RFC 9162 tree builder (definitions of §2.1.1, §2.1.3.1, §2.1.4.1)
# ------------------------------------------------------------------------------------------

def _k(n):
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d):
    if len(d) == 0:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m, d):
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m, d, b):
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def proof(m, d):
    return subproof(m, d, True)


# ------------------------------------------------------------------------------------------
# Signing (C2SP signed note, Ed25519)
# ------------------------------------------------------------------------------------------

class Signer:
    def __init__(self, name):
        self.name = name
        self.sk = Ed25519PrivateKey.generate()
        self.pub = self.sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.id = hashlib.sha256(name.encode() + b"\n\x01" + self.pub).digest()[:4]
        self.vkey = name + "+" + self.id.hex() + "+" + base64.b64encode(b"\x01" + self.pub).decode()

    def sign(self, text: str) -> str:
        sig = self.sk.sign(text.encode("utf-8"))
        return text + "\n\u2014 " + self.name + " " + base64.b64encode(self.id + sig).decode() + "\n"

    def checkpoint(self, origin, size, root, extra=""):
        return self.sign(f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n{extra}")


def canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def b64(x: bytes) -> str:
    return base64.b64encode(x).decode()


def make_entries(n, tag="log-a"):
    return [canon({"actor": "alice", "detail": {"lr_ppm": 200 + i, "note": "grüße ✓ \"q\"\t",
                                               "tag": tag}, "index": i, "kind": "run.start",
                   "time": f"2026-12-07T14:{i % 60:02d}:00Z"})
            for i in range(n)]


ORIGIN = "ferrotune.test/audit"


def run_main(argv):
    out = io.StringIO()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = verify.main(argv, out=out)
    return rc, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------

class Rfc6962Vectors(unittest.TestCase):
    # google/certificate-transparency python/ct/crypto/merkle_test.py, TreeHasherTest
    LEAVES = [H(s) for s in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                             "606162636465666768696a6b6c6d6e6f"]]
    ROOTS = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
    # MerkleVerifierTest.sha256_proofs: (old size, new size, old root, new root, proof)
    CONSISTENCY = [
        (1, 1, ROOTS[0], ROOTS[0], []),
        (1, 8, ROOTS[0], ROOTS[7],
         ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
          "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
          "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
        (6, 8, ROOTS[5], ROOTS[7],
         ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
          "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
          "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
        (2, 5, ROOTS[1], ROOTS[4],
         ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
          "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    ]
    # MerkleVerifierTest: a real CT log inclusion proof (leaf_hash, leaf_index, tree_size,
    # expected_root_hash, sha256_audit_path)
    CT_LEAF = "7a395c866d5ecdb0cccb623e011dbc392cd348d1d1d72776174e127a24b09c78"
    CT_INDEX, CT_SIZE = 848049, 3630887
    CT_ROOT = "78316a05c9bcf14a3a4548f5b854a9adfcd46a4c034401b3ce7eb7ac2f1d0ecb"
    CT_PATH = [
        "1a208aeebcd1b39fe2de247ee8db9454e1e93a312d206b87f6ca9cc6ec6f1ddd",
        "0a1b78b383f580856f433c01a5741e160d451c185910027f6cc9f828687a40c4",
        "3d1745789bc63f2da15850de1c12a5bf46ed81e1cc90f086148b1662e79aab3d",
        "9095b61e14d8990acf390905621e62b1714fb8e399fbb71de5510e0aef45affe",
        "0a332b91b8fab564e6afd1dd452449e04619b18accc0ff9aa8393cd4928451f2",
        "2336f0181d264aed6d8f3a6507ca14a8d3b3c3a23791ac263e845d208c1ee330",
        "b4ce56e300590500360c146c6452edbede25d4ed83919278749ee5dbe178e048",
        "933f6ddc848ea562e4f9c5cfb5f176941301dad0c6fdb9d1fbbe34fac1be6966",
        "b95a6222958a86f74c030be27c44f57dbe313e5e7c7f4ffb98bcbd3a03bb52f2",
        "daeeb3ce5923defd0faeb8e0c210b753b85b809445d7d3d3cd537a9aabaa9c45",
        "7fadd0a13e9138a2aa6c3fdec4e2275af233b94812784f66bcca9aa8e989f2bc",
        "1864e6ba3e32878610546539734fb5eeae2529991f130c575c73a7e25a2a7c56",
        "12842d1202b1dc6828a17ab253c02e7ce9409b5192430feba44189f39cc02d66",
        "29af64b16fa3053c13d02ac63aa75b23aa468506e44c3a2315edc85d2dc22b11",
        "b527b99934a0bd9edd154e449b0502e2c499bba783f3bc3dfe23364b6b532009",
        "4584db8ae8e351ace08e01f306378a92bfd43611714814f3d834a2842d69faa8",
        "86a9a41573b0d6e4292f01e93243d6cc65b30f06606fc6fa57390e7e90ed580f",
        "a88b98fbe84d4c6aae8db9d1605dfac059d9f03fe0fcb0d5dff1295dacba09e6",
        "06326dc617a6d1f7021dc536026dbfd5fffc6f7c5531d48ef6ccd1ed1569f2a1",
        "f41fe8fdc3a2e4e8345e30216e7ebecffee26ff266eeced208a6c2a3cf08f960",
        "40cf5bde8abb76983f3e98ba97aa36240402975674e120f234b3448911090f8d",
        "b3222dc8658538079883d980d7fdc2bef9285344ea34338968f736b04aeb387a",
    ]

    def test_empty_root(self):
        self.assertEqual(mth([]).hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        self.assertEqual(verify.EMPTY_ROOT, mth([]))

    def test_roots_of_the_eight_standard_leaves(self):
        for n in range(1, 9):
            self.assertEqual(mth(self.LEAVES[:n]).hex(), self.ROOTS[n - 1], f"root of {n} leaves")
        self.assertEqual(verify.leaf_hash(b"").hex(), self.ROOTS[0])

    def test_published_consistency_proofs(self):
        for m, n, r1, r2, pr in self.CONSISTENCY:
            verify.verify_consistency(m, n, H(r1), H(r2), [H(x) for x in pr])
            # our own builder yields the same proofs
            self.assertEqual([x.hex() for x in proof(m, self.LEAVES[:n])] if m != n else [], pr)

    def test_published_consistency_proofs_tampered(self):
        m, n, r1, r2, pr = self.CONSISTENCY[2]
        pr = [H(x) for x in pr]
        with self.assertRaisesRegex(verify.VerifyError, "too short"):
            verify.verify_consistency(m, n, H(r1), H(r2), pr[:2])
        bad = bytearray(H(r2))
        bad[0] ^= 1
        with self.assertRaisesRegex(verify.VerifyError, "new root"):
            verify.verify_consistency(m, n, H(r1), bytes(bad), pr)
        with self.assertRaisesRegex(verify.VerifyError, "larger than"):
            verify.verify_consistency(n, m, H(r2), H(r1), pr)
        with self.assertRaisesRegex(verify.VerifyError, "fork"):
            verify.verify_consistency(3, 3, H(self.ROOTS[2]), H(self.ROOTS[3]), [])

    def test_published_ct_inclusion_proof(self):
        p = [H(x) for x in self.CT_PATH]
        verify.verify_inclusion(self.CT_INDEX, self.CT_SIZE, H(self.CT_LEAF), p, H(self.CT_ROOT))
        with self.assertRaises(verify.VerifyError):
            verify.verify_inclusion(self.CT_INDEX + 1, self.CT_SIZE, H(self.CT_LEAF), p, H(self.CT_ROOT))
        with self.assertRaises(verify.VerifyError):
            verify.verify_inclusion(self.CT_INDEX, self.CT_SIZE, H(self.CT_LEAF), p[:-1], H(self.CT_ROOT))

    def test_builder_and_verifier_agree_on_all_small_trees(self):
        leaves = [bytes([i]) * (i % 5) for i in range(33)]
        for n in range(1, 34):
            d = leaves[:n]
            root = mth(d)
            for i in range(n):
                verify.verify_inclusion(i, n, verify.leaf_hash(d[i]), path(i, d), root)
                if n > 1:
                    with self.assertRaises(verify.VerifyError):
                        verify.verify_inclusion((i + 1) % n, n, verify.leaf_hash(d[i]), path(i, d), root)
            for m in range(1, n):
                verify.verify_consistency(m, n, mth(d[:m]), root, proof(m, d))
                p = proof(m, d)
                if len(p) > 1:
                    with self.assertRaises(verify.VerifyError):
                        verify.verify_consistency(m, n, mth(d[:m]), root, p[::-1])


class TransparencyDevVectors(unittest.TestCase):
    """transparency-dev/merkle proof/verify_test.go: inclusionProofs, consistencyProofs, the
    edge-case table of TestVerifyConsistency and the corruptInclusionProof /
    corruptConsistencyProof probes (each must be rejected)."""
    ROOTS = [H(r) for r in Rfc6962Vectors.ROOTS]
    LEAVES = Rfc6962Vectors.LEAVES
    SOME = H("abacaba000000000000000000000000000000000000000000060061e00123456")
    EMPTY = H("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    # (leaf, 1-based; size; proof)
    INCLUSION = [
        (1, 1, []),
        (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
        (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
        (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    ]
    CONSISTENCY = [(m, n, pr) for m, n, _, _, pr in Rfc6962Vectors.CONSISTENCY] + [
        (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"])]

    def rejects(self, fn, *args, desc=""):
        with self.assertRaises(verify.VerifyError, msg=desc):
            fn(*args)

    def test_inclusion_vectors_and_corruptions(self):
        for leaf, size, pr in self.INCLUSION:
            pr = [H(x) for x in pr]
            i, root, lh = leaf - 1, self.ROOTS[size - 1], verify.leaf_hash(self.LEAVES[leaf - 1])
            verify.verify_inclusion(i, size, lh, pr, root)
            self.assertEqual(path(i, self.LEAVES[:size]), pr)
            probes = [(i - 1, size, root, lh, pr, "leafIndex - 1"), (i + 1, size, root, lh, pr, "leafIndex + 1"),
                      (i ^ 2, size, root, lh, pr, "leafIndex ^ 2"), (i, size * 2, root, lh, pr, "treeSize * 2"),
                      (i, size // 2, root, lh, pr, "treeSize / 2"), (i, size, root, b"WrongLeaf", pr, "wrong leaf"),
                      (i, size, self.EMPTY, lh, pr, "empty root"), (i, size, self.SOME, lh, pr, "random root"),
                      (i, size, root, lh, pr + [b""], "trailing garbage"), (i, size, root, lh, pr + [root], "trailing root"),
                      (i, size, root, lh, [b""] + pr, "preceding garbage"), (i, size, root, lh, [root] + pr, "preceding root")]
            for k in range(len(pr)):
                bad = list(pr)
                bad[k] = bytes([bad[k][0] ^ 8]) + bad[k][1:]
                probes.append((i, size, root, lh, bad, f"modified proof[{k}]"))
            if pr:
                probes.append((i, size, root, lh, pr[:-1], "removed component"))
            if len(pr) > 1:
                probes.append((i, size, root, lh, [pr[0], self.SOME] + pr[1:], "inserted component"))
            for pi, ps, proot, plh, ppr, desc in probes:
                self.rejects(verify.verify_inclusion, pi, ps, plh, ppr, proot, desc=f"{leaf}/{size} {desc}")

    def test_inclusion_edge_cases(self):
        for index, size in ((0, 0), (0, 1), (1, 0), (2, 1)):
            self.rejects(verify.verify_inclusion, index, size, self.SOME, [], b"")
            self.rejects(verify.verify_inclusion, index, size, b"", [], self.EMPTY)
            self.rejects(verify.verify_inclusion, index, size, self.SOME, [], self.EMPTY)

    def test_consistency_edge_table(self):
        r1, r2, p1, p2 = b"don't care 1", b"don't care 2", [], [self.EMPTY]
        for m, n, a, b, pr, want_err in [
                (0, 0, r1, r2, p1, True), (1, 1, r1, r2, p1, True),
                (0, 0, r1, r1, p1, False), (0, 1, r1, r2, p1, False), (1, 1, r2, r2, p1, False),
                (1, 0, r1, r2, p1, True), (2, 1, r1, r2, p1, True), (1, 2, r1, r2, p1, True),
                (0, 0, self.EMPTY, r2, p1, True), (1, 1, self.EMPTY, r2, p1, True),
                (0, 0, self.EMPTY, self.EMPTY, p2, True), (0, 1, self.EMPTY, self.EMPTY, p2, True),
                (1, 1, self.EMPTY, self.EMPTY, p2, True)]:
            if want_err:
                self.rejects(verify.verify_consistency, m, n, a, b, pr, desc=f"{m}->{n}")
            else:
                verify.verify_consistency(m, n, a, b, pr)

    def test_consistency_vectors_and_corruptions(self):
        for m, n, pr in self.CONSISTENCY:
            pr = [H(x) for x in pr]
            r1, r2 = self.ROOTS[m - 1], self.ROOTS[n - 1]
            verify.verify_consistency(m, n, r1, r2, pr)
            if not pr:
                continue
            self.assertEqual(proof(m, self.LEAVES[:n]), pr)
            probes = [(m - 1, n, r1, r2, pr, "size1 - 1"), (m + 1, n, r1, r2, pr, "size1 + 1"),
                      (m ^ 2, n, r1, r2, pr, "size1 ^ 2"), (m, n * 2, r1, r2, pr, "size2 * 2"),
                      (m, n // 2, r1, r2, pr, "size2 / 2"), (m, n, b"WrongRoot", r2, pr, "wrong root1"),
                      (m, n, r1, b"WrongRoot", pr, "wrong root2"), (m, n, r2, r1, pr, "swapped roots"),
                      (m, n, r1, r2, [], "empty proof"), (m, n, r1, r2, pr + [b""], "trailing garbage"),
                      (m, n, r1, r2, pr + [r1], "trailing root1"), (m, n, r1, r2, pr + [r2], "trailing root2"),
                      (m, n, r1, r2, [b""] + pr, "preceding garbage"), (m, n, r1, r2, [r1] + pr, "preceding root1"),
                      (m, n, r1, r2, [r2] + pr, "preceding root2"), (m, n, r1, r2, [pr[0]] + pr, "preceding proof[0]"),
                      (m, n, r1, r2, pr[:-1], "truncated proof")]
            for k in range(len(pr)):
                bad = list(pr)
                bad[k] = bytes([bad[k][0] ^ 16]) + bad[k][1:]
                probes.append((m, n, r1, r2, bad, f"modified proof[{k}]"))
            for pm, pn, pa, pb, ppr, desc in probes:
                self.rejects(verify.verify_consistency, pm, pn, pa, pb, ppr, desc=f"{m}->{n} {desc}")


class SignedNotes(unittest.TestCase):
    # golang/mod sumdb/note/note_test.go
    PETER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    TEXT = ("If you think cryptography is the answer to your problem,\n"
            "then you don't know what your problem is.\n")
    PETER_SIG = ("\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqf"
                 "qdngotpRZb6KE6RyyBwJnAM=\n")
    ENOCH_SIG = ("\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTG"
                 "wnWLox33WWd1RvMc+QQ=\n")
    # C2SP signed-note.md, "Verifier keys / Example"
    C2SP_KEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
    C2SP_NOTE = ("This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfX"
                 "ppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")

    def test_go_note_verifies(self):
        key = verify.VerifierKey(self.PETER_KEY)
        self.assertEqual(key.id.hex(), "c74f20a3")
        text = verify.open_note((self.TEXT + "\n" + self.PETER_SIG).encode(), key, "note")
        self.assertEqual(text, self.TEXT.encode())
        # the unknown EnochRoot signature is ignored
        text = verify.open_note((self.TEXT + "\n" + self.PETER_SIG + self.ENOCH_SIG).encode(), key, "note")
        self.assertEqual(text, self.TEXT.encode())

    def test_c2sp_example_verifies(self):
        key = verify.VerifierKey(self.C2SP_KEY)
        self.assertEqual(verify.open_note(self.C2SP_NOTE.encode(), key, "note"),
                         b"This is an example message.\n")

    def test_go_note_tampered(self):
        key = verify.VerifierKey(self.PETER_KEY)
        with self.assertRaisesRegex(verify.VerifyError, "invalid signature for key PeterNeumann\\+c74f20a3"):
            verify.open_note((self.TEXT.replace("answer", "Answer") + "\n" + self.PETER_SIG).encode(), key, "note")
        s = self.PETER_SIG
        with self.assertRaisesRegex(verify.VerifyError, "invalid signature"):  # same as Go's test
            verify.open_note((self.TEXT + "\n" + s[:60] + "ABCD" + s[60:]).encode(), key, "note")
        with self.assertRaisesRegex(verify.VerifyError, "no signature by key"):
            verify.open_note((self.TEXT + "\n" + self.ENOCH_SIG).encode(), key, "note")
        with self.assertRaisesRegex(verify.VerifyError, "malformed|not base64"):
            verify.open_note((self.TEXT + "\n\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIu"
                              "GUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n").encode(), key, "note")
        with self.assertRaisesRegex(verify.VerifyError, "control character"):
            verify.open_note((self.TEXT.replace(",", "\t") + "\n" + self.PETER_SIG).encode(), key, "note")

    def test_go_bad_keys(self):
        for bad in ["PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong id
                    "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
                    "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                    "PeterNeumann+c74f20a3", "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"]:
            with self.assertRaises(verify.VerifyError, msg=bad):
                verify.VerifierKey(bad)

    def test_checkpoint_body(self):
        s = Signer(ORIGIN)
        key = verify.VerifierKey(s.vkey)
        cp = verify.open_checkpoint(s.checkpoint(ORIGIN, 5, mth([b"a"] * 5)), key, "cp")
        self.assertEqual((cp.origin, cp.size, cp.root), (ORIGIN, 5, mth([b"a"] * 5)))
        with self.assertRaisesRegex(verify.VerifyError, "leading zeros"):
            verify.open_checkpoint(s.sign(f"{ORIGIN}\n05\n{b64(mth([b'a'] * 5))}\n"), key, "cp")
        with self.assertRaisesRegex(verify.VerifyError, "fewer than 3"):
            verify.open_checkpoint(s.sign(f"{ORIGIN}\n5\n"), key, "cp")


class CanonicalJson(unittest.TestCase):
    def ok(self, s):
        verify.check_canonical_entry(s.encode("utf-8"))

    def bad(self, s, msg):
        with self.assertRaisesRegex(verify.VerifyError, msg):
            verify.check_canonical_entry(s.encode("utf-8") if isinstance(s, str) else s)

    def test_accepts(self):
        self.ok('{"a":1,"b":[true,false,null,"x"],"c":{"d":-5,"e":"é✓😀"}}')
        self.ok('{"s":"\\"\\\\\\n\\r\\t\\b\\f\\u0000\\u001f\\u007f"}'.replace("\\u007f", "\x7f"))
        self.ok('{"big":18446744073709551615}')

    def test_rejects(self):
        self.bad('{"b":1,"a":2}', "not canonical")
        self.bad('{"a": 1}', "not canonical")
        self.bad('{"a":1.5}', "floating-point")
        self.bad('{"a":1e3}', "floating-point")
        self.bad('{"a":NaN}', "non-JSON constant")
        self.bad('{"a":"\\u00e9"}', "not canonical")  # escaped non-ASCII
        self.bad('{"a":"\\u001F"}', "not canonical")  # upper-case hex escape
        self.bad('{"a":"\\/"}', "not canonical")
        self.bad('{"a":-0}', "not canonical")
        self.bad('{"a":1,"a":1}', "twice")
        self.bad('[1]', "not a JSON object")
        self.bad('{"a":"\\ud800"}', "lone surrogate")
        self.bad(b'{"a":"\xff"}', "UTF-8")
        self.bad('{"a":1} ', "not canonical")


# ------------------------------------------------------------------------------------------
# Bundles built here
# ------------------------------------------------------------------------------------------

class Fixture:
    def __init__(self, n=13, signer=None, tag="log-a"):
        self.signer = signer or Signer(ORIGIN)
        self.entries = make_entries(n, tag)
        self.d = [e.encode() for e in self.entries]

    def root(self, size):
        return mth(self.d[:size])

    def proof_bundle(self, index, size):
        return {"format": "ferrotune-tlog-proof/v1", "origin": ORIGIN, "index": index, "size": size,
                "entry": self.entries[index], "leaf_hash": b64(verify.leaf_hash(self.d[index])),
                "inclusion": [b64(x) for x in path(index, self.d[:size])],
                "checkpoint": self.signer.checkpoint(ORIGIN, size, self.root(size)),
                "verifier_key": self.signer.vkey}

    def consistency_bundle(self, old, new):
        return {"format": "ferrotune-tlog-consistency/v1", "origin": ORIGIN, "old_size": old,
                "new_size": new, "old_root": b64(self.root(old)), "new_root": b64(self.root(new)),
                "proof": [b64(x) for x in (proof(old, self.d[:new]) if 0 < old < new else [])],
                "old_checkpoint": self.signer.checkpoint(ORIGIN, old, self.root(old)),
                "new_checkpoint": self.signer.checkpoint(ORIGIN, new, self.root(new)),
                "verifier_key": self.signer.vkey}

    def export(self, out, first, last, stored=(3, 8, 13)):
        size = stored[-1]
        os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
        with open(os.path.join(out, "entries.log"), "w", encoding="utf-8", newline="") as f:
            for i in range(first, last + 1):
                f.write(self.entries[i] + "\n")
        with open(os.path.join(out, "range.json"), "w") as f:
            json.dump({"first": first, "last": last, "count": last - first + 1, "origin": ORIGIN}, f)
        with open(os.path.join(out, "checkpoint.note"), "w", encoding="utf-8", newline="") as f:
            f.write(self.signer.checkpoint(ORIGIN, size, self.root(size)))
        with open(os.path.join(out, "inclusion.jsonl"), "w") as f:
            for i in range(first, last + 1):
                f.write(json.dumps({"index": i, "leaf_hash": b64(verify.leaf_hash(self.d[i])),
                                    "inclusion": [b64(x) for x in path(i, self.d[:size])]}) + "\n")
        for s in stored:
            with open(os.path.join(out, "checkpoints", f"{s:012d}.note"), "w", encoding="utf-8",
                      newline="") as f:
                f.write(self.signer.checkpoint(ORIGIN, s, self.root(s)))
        with open(os.path.join(out, "consistency.jsonl"), "w") as f:
            for a, b in zip(stored, stored[1:]):
                f.write(json.dumps({"old_size": a, "new_size": b,
                                    "proof": [b64(x) for x in proof(a, self.d[:b])]}) + "\n")
        with open(os.path.join(out, "verifier.key"), "w") as f:
            f.write(self.signer.vkey + "\n")
        with open(os.path.join(out, "README.txt"), "w") as f:
            f.write("test export\n")


class BundleTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="audit-verify-test-")
        self.fx = Fixture()

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def write_json(self, name, obj):
        p = os.path.join(self.tmp, name)
        with open(p, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False)
        return p

    def check(self, argv, ok, fail_re=None):
        rc, out, err = run_main(argv)
        last = out.strip().splitlines()[-1] if out.strip() else ""
        if ok:
            self.assertEqual((rc, last), (0, "OK"), out + err)
        else:
            self.assertEqual(rc, 1, out + err)
            self.assertTrue(last.startswith("FAIL: "), out)
            if fail_re:
                self.assertRegex(last, fail_re, out)
        return out


class ProofBundles(BundleTest):
    def prove(self, b, ok, fail_re=None, key=True):
        p = self.write_json("proof.json", b)
        argv = ["proof", p] + (["--key", self.fx.signer.vkey] if key else [])
        return self.check(argv, ok, fail_re)

    def test_valid_every_index(self):
        for size in (1, 2, 5, 8, 13):
            for i in range(size):
                self.prove(self.fx.proof_bundle(i, size), True)

    def test_without_key_warns(self):
        out = self.prove(self.fx.proof_bundle(4, 13), True, key=False)
        self.assertIn("WARNING: no --key", out)
        self.assertIn("pins", out)

    def test_key_file(self):
        kf = os.path.join(self.tmp, "vkey")
        with open(kf, "w") as f:
            f.write(self.fx.signer.vkey + "\n")
        p = self.write_json("proof.json", self.fx.proof_bundle(4, 13))
        self.check(["proof", p, "--key-file", kf], True)

    def test_flipped_entry_byte(self):
        b = self.fx.proof_bundle(4, 13)
        b["entry"] = b["entry"].replace("alice", "alicf")
        self.prove(b, False, r"leaf hash: entry 4: SHA-256")

    def test_entry_and_leaf_hash_both_changed(self):
        b = self.fx.proof_bundle(4, 13)
        b["entry"] = b["entry"].replace("alice", "alicf")
        b["leaf_hash"] = b64(verify.leaf_hash(b["entry"].encode()))
        self.prove(b, False, r"inclusion proof: entry 4 in tree size 13: .*root hash")

    def test_wrong_index(self):
        b = self.fx.proof_bundle(4, 13)
        b["index"] = 5
        self.prove(b, False, r"inclusion proof: entry 5 in tree size 13")
        b["index"] = 13
        self.prove(b, False, r"inclusion proof: entry 13 .*not below tree size 13")

    def test_reordered_proof(self):
        b = self.fx.proof_bundle(4, 13)
        b["inclusion"] = b["inclusion"][::-1]
        self.prove(b, False, r"inclusion proof: entry 4 in tree size 13")
        b = self.fx.proof_bundle(4, 13)
        b["inclusion"] = b["inclusion"][:-1]
        self.prove(b, False, r"inclusion proof: entry 4 .*shorter")

    def test_wrong_key(self):
        other = Signer(ORIGIN)
        b = self.fx.proof_bundle(4, 13)
        p = self.write_json("proof.json", b)
        self.check(["proof", p, "--key", other.vkey], False, r"checkpoint signature: .*no signature by key")
        # the attacker re-signs with his own key and ships it in the bundle: pinned key catches it
        b2 = dict(b, checkpoint=other.checkpoint(ORIGIN, 13, self.fx.root(13)), verifier_key=other.vkey)
        self.prove(b2, False, r"checkpoint signature: .*no signature by key")

    def test_same_name_other_key(self):
        # a key with the same name but a different id is ignored (C2SP), so: no signature
        other = Signer(ORIGIN)
        b = self.fx.proof_bundle(4, 13)
        b["checkpoint"] = other.checkpoint(ORIGIN, 13, self.fx.root(13))
        self.prove(b, False, r"no signature by key")

    def test_forged_signature_with_right_key_id(self):
        other = Signer(ORIGIN)
        b = self.fx.proof_bundle(4, 13)
        text = f"{ORIGIN}\n13\n{b64(self.fx.root(13))}\n"
        sig = other.sk.sign(text.encode())
        b["checkpoint"] = text + "\n\u2014 " + ORIGIN + " " + b64(self.fx.signer.id + sig) + "\n"
        self.prove(b, False, r"checkpoint signature: .*invalid signature for key")

    def test_edited_checkpoint_size_and_root(self):
        b = self.fx.proof_bundle(4, 13)
        b["checkpoint"] = b["checkpoint"].replace(f"{ORIGIN}\n13\n", f"{ORIGIN}\n12\n")
        self.prove(b, False, r"checkpoint signature: checkpoint \(size 13\): invalid signature")
        b = self.fx.proof_bundle(4, 13)
        b["checkpoint"] = b["checkpoint"].replace(b64(self.fx.root(13)), b64(self.fx.root(12)))
        self.prove(b, False, r"checkpoint signature: .*invalid signature")

    def test_bundle_size_differs_from_checkpoint(self):
        b = self.fx.proof_bundle(4, 13)
        b["size"] = 12
        self.prove(b, False, r"checkpoint size 13 is not the bundle's size 12")

    def test_origin_mismatch(self):
        b = self.fx.proof_bundle(4, 13)
        b["origin"] = "someone.else/log"
        self.prove(b, False, r"checkpoint origin and size: checkpoint origin")

    def test_non_canonical_entry(self):
        # The log itself recorded a non-canonical line (hashes and proofs all consistent with it).
        fx = Fixture()
        fx.entries[4] = '{"kind":"run.start","actor":"alice","index":4}'
        fx.d[4] = fx.entries[4].encode()
        self.fx = fx
        self.prove(fx.proof_bundle(4, 13), False, r"entry canonical JSON: entry 4 is not canonical JSON")
        fx.entries[4] = '{"actor":"alice","index":4,"loss":0.25}'
        fx.d[4] = fx.entries[4].encode()
        self.prove(fx.proof_bundle(4, 13), False, r"entry 4 contains a floating-point number")

    def test_wrong_format(self):
        b = self.fx.proof_bundle(4, 13)
        b["format"] = "ferrotune-tlog-proof/v2"
        self.prove(b, False, r"bundle fields: format")


class ConsistencyBundles(BundleTest):
    def cons(self, b, ok, fail_re=None):
        p = self.write_json("cons.json", b)
        return self.check(["consistency", p, "--key", self.fx.signer.vkey], ok, fail_re)

    def test_valid(self):
        for old in range(0, 14):
            for new in range(max(old, 1), 14):
                self.cons(self.fx.consistency_bundle(old, new), True)

    def test_without_checkpoints_warns(self):
        b = self.fx.consistency_bundle(5, 13)
        b["old_checkpoint"] = b["new_checkpoint"] = None
        out = self.cons(b, True)
        self.assertIn("no signed checkpoint", out)

    def test_fork(self):
        # Two different logs under one key: a proof from log B (same sizes) does not connect
        # log A's old head to log B's new head.
        fb = Fixture(signer=self.fx.signer, tag="log-b")
        a, b = self.fx.consistency_bundle(5, 13), fb.consistency_bundle(5, 13)
        forked = dict(b, old_root=a["old_root"], old_checkpoint=a["old_checkpoint"])
        self.cons(forked, False, r"consistency proof 5 -> 13: .*old root")
        forked = dict(a, new_root=b["new_root"], new_checkpoint=b["new_checkpoint"])
        self.cons(forked, False, r"consistency proof 5 -> 13: .*new root")
        # log B's history rewritten after entry 8: A's 8-tree vs B's 13-tree
        fc = Fixture(signer=self.fx.signer)
        fc.entries[9:] = make_entries(13, "log-c")[9:]
        fc.d = [e.encode() for e in fc.entries]
        c = fc.consistency_bundle(8, 13)
        self.cons(c, True)
        self.cons(dict(c, old_root=self.fx.consistency_bundle(8, 13)["old_root"],
                       old_checkpoint=self.fx.consistency_bundle(8, 13)["old_checkpoint"]), True)
        c10 = fc.consistency_bundle(10, 13)
        a10 = self.fx.consistency_bundle(10, 13)
        self.cons(dict(c10, old_root=a10["old_root"], old_checkpoint=a10["old_checkpoint"]), False,
                  r"consistency proof 10 -> 13")

    def test_edited_roots(self):
        b = self.fx.consistency_bundle(5, 13)
        b["new_root"] = b64(self.fx.root(12))
        self.cons(b, False, r"new_checkpoint: new_checkpoint \(size 13\): root .* is not the bundle's")
        b = self.fx.consistency_bundle(5, 13)
        b["proof"] = b["proof"][::-1]
        self.cons(b, False, r"consistency proof 5 -> 13")

    def test_equal_sizes(self):
        b = self.fx.consistency_bundle(7, 7)
        self.cons(b, True)
        b["proof"] = [b["old_root"]]
        self.cons(b, False, r"must be empty")


class ExportFolders(BundleTest):
    def export(self, first=2, last=9, stored=(3, 8, 13)):
        out = os.path.join(self.tmp, "export")
        shutil.rmtree(out, ignore_errors=True)
        self.fx.export(out, first, last, stored)
        return out

    def bundle(self, out, ok, fail_re=None, key=True):
        argv = ["bundle", out] + (["--key", self.fx.signer.vkey] if key else [])
        return self.check(argv, ok, fail_re)

    def edit(self, path, fn, binary=False):
        with open(path, "rb" if binary else "r", encoding=None if binary else "utf-8",
                  newline=None if binary else "") as f:
            data = f.read()
        with open(path, "wb" if binary else "w", encoding=None if binary else "utf-8",
                  newline=None if binary else "") as f:
            f.write(fn(data))

    def test_valid(self):
        for first, last in ((0, 12), (2, 9), (12, 12), (0, 0)):
            self.bundle(self.export(first, last), True)
        self.bundle(self.export(stored=(13,)), True)
        self.bundle(self.export(stored=(1, 2, 4, 8, 13)), True)

    def test_without_key_uses_verifier_key_with_warning(self):
        out = self.bundle(self.export(), True, key=False)
        self.assertIn("WARNING: no --key", out)

    def test_flipped_entry_byte(self):
        out = self.export()
        def flip(data):
            i = data.index(b'"alice"', data.index(b"\n") + 1)  # in entry 3
            return data[:i + 1] + b"A" + data[i + 2:]
        self.edit(os.path.join(out, "entries.log"), flip, binary=True)
        self.bundle(out, False, r"inclusion.jsonl .*: entry 3: SHA-256\(0x00 \|\| entry\)")

    def test_removed_entry(self):
        out = self.export()
        self.edit(os.path.join(out, "entries.log"), lambda s: "".join(s.splitlines(True)[:3] + s.splitlines(True)[4:]))
        self.bundle(out, False, r"entries.log has 7 entries, range.json says 8")

    def test_removed_entry_and_fixed_count(self):
        out = self.export()
        self.edit(os.path.join(out, "entries.log"), lambda s: "".join(s.splitlines(True)[:3] + s.splitlines(True)[4:]))
        self.edit(os.path.join(out, "inclusion.jsonl"), lambda s: "".join(s.splitlines(True)[:3] + s.splitlines(True)[4:]))
        self.edit(os.path.join(out, "range.json"), lambda s: s.replace('"last": 9, "count": 8', '"last": 8, "count": 7'))
        self.bundle(out, False, r"index 6 where entry 5 was expected")

    def test_swapped_entries(self):
        out = self.export()
        def swap(s):
            l = s.splitlines(True)
            l[2], l[3] = l[3], l[2]
            return "".join(l)
        self.edit(os.path.join(out, "entries.log"), swap)
        self.bundle(out, False, r"entry 4: SHA-256")

    def test_range_count(self):
        out = self.export()
        self.edit(os.path.join(out, "range.json"), lambda s: s.replace('"count": 8', '"count": 9'))
        self.bundle(out, False, r"range.json: range.json: count 9 is not last - first \+ 1 = 8")

    def test_edited_checkpoint_note(self):
        out = self.export()
        self.edit(os.path.join(out, "checkpoint.note"), lambda s: s.replace(f"{ORIGIN}\n13\n", f"{ORIGIN}\n14\n"))
        self.bundle(out, False, r"checkpoint.note \(signature, origin, size\): checkpoint.note: invalid signature")

    def test_wrong_key(self):
        out = self.export()
        self.check(["bundle", out, "--key", Signer(ORIGIN).vkey], False, r"no signature by key")

    def test_non_canonical_entry(self):
        self.fx.entries[5] = self.fx.entries[5].replace('"actor":"alice",', "") + " "
        self.fx.d[5] = self.fx.entries[5].encode()
        self.bundle(self.export(), False, r"entries.log .*: entry 5 is not canonical JSON")

    def test_fork_in_stored_checkpoints(self):
        out = self.export()
        fb = Fixture(signer=self.fx.signer, tag="log-b")
        with open(os.path.join(out, "checkpoints", "000000000008.note"), "w") as f:
            f.write(fb.signer.checkpoint(ORIGIN, 8, fb.root(8)))
        self.bundle(out, False, r"consistency.jsonl .*: checkpoint 3 -> checkpoint 8: .*new root")

    def test_checkpoint_note_differs_from_stored(self):
        out = self.export()
        fb = Fixture(signer=self.fx.signer, tag="log-b")
        with open(os.path.join(out, "checkpoints", "000000000013.note"), "w") as f:
            f.write(fb.signer.checkpoint(ORIGIN, 13, fb.root(13)))
        self.bundle(out, False, r"different roots for the same size \(fork\)")

    def test_consistency_file_wrong(self):
        out = self.export()
        self.edit(os.path.join(out, "consistency.jsonl"), lambda s: s.splitlines(True)[0])
        self.bundle(out, False, r"consistency.jsonl has 1 proofs for 3 stored checkpoints")
        out = self.export()
        self.edit(os.path.join(out, "consistency.jsonl"),
                  lambda s: "".join(reversed(s.splitlines(True))))
        self.bundle(out, False, r"sizes 8 -> 13, but the successive stored checkpoints are 3 -> 8")

    def test_stored_checkpoint_misnamed(self):
        out = self.export()
        os.rename(os.path.join(out, "checkpoints", "000000000008.note"),
                  os.path.join(out, "checkpoints", "000000000009.note"))
        self.bundle(out, False, r"checkpoint 9 .*its tree size is 8")

    def test_checkpoint_too_small(self):
        out = self.export(0, 12, stored=(3, 8, 13))
        with open(os.path.join(out, "checkpoint.note"), "w") as f:
            f.write(self.fx.signer.checkpoint(ORIGIN, 12, self.fx.root(12)))
        self.bundle(out, False, r"tree size 12 does not cover entry 12")


class Cli(unittest.TestCase):
    def run_cli(self, *args):
        return subprocess.run([sys.executable, os.path.join(HERE, "verify.py"), *args],
                              capture_output=True, text=True)

    def test_usage_errors(self):
        self.assertEqual(self.run_cli().returncode, 2)
        self.assertEqual(self.run_cli("frobnicate", "x").returncode, 2)
        self.assertEqual(self.run_cli("proof", "/nonexistent/x.json").returncode, 2)
        self.assertEqual(self.run_cli("bundle", "/nonexistent").returncode, 2)
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(Fixture().proof_bundle(1, 3), f)
            f.flush()
            r = self.run_cli("proof", f.name, "--key", "not-a-key")
            self.assertEqual(r.returncode, 2, r.stdout + r.stderr)

    def test_exit_codes(self):
        fx = Fixture()
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(fx.proof_bundle(1, 3), f)
            f.flush()
            r = self.run_cli("proof", f.name, "--key", fx.signer.vkey)
            self.assertEqual((r.returncode, r.stdout.splitlines()[-1]), (0, "OK"), r.stdout + r.stderr)
            r = self.run_cli("proof", f.name, "--key", Signer(ORIGIN).vkey)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertTrue(r.stdout.splitlines()[-1].startswith("FAIL: "))


if __name__ == "__main__":
    unittest.main()
