#!/usr/bin/env python3
"""Independent verifier for ferrotune's audit log (proof bundles, consistency bundles, exports).

Written from the standards, not from ferrotune's Rust code:

- RFC 9162 (Certificate Transparency 2.0) §2.1: Merkle tree hashing (leaf = SHA-256(0x00 || entry),
  node = SHA-256(0x01 || left || right)); §2.1.3.2 "Verifying an Inclusion Proof" and §2.1.4.2
  "Verifying Consistency between Two Tree Heads", implemented step by step as written there.
- C2SP signed-note (c2sp.org/signed-note): note text, blank line, signature lines
  "— <key name> base64(4-byte key ID || signature)"; Ed25519 (signature type 0x01) over the note
  text; key ID = SHA-256(key name || 0x0A || 0x01 || public key)[:4]; verifier keys
  "<key name>+<hex key ID>+base64(0x01 || public key)". Parsing follows the same rules as Go's
  golang.org/x/mod/sumdb/note (valid UTF-8, no control characters but newline, split at the last
  blank line, unknown signatures ignored, a failing known signature rejects the note).
- C2SP tlog-checkpoint (c2sp.org/tlog-checkpoint): note text = origin line, decimal tree size line
  (no leading zeros), base64 root hash line, optional non-empty extension lines.

ferrotune's bundle layout is the one documented at the top of crates/govern/src/audit/mod.rs.

Usage:
  verify.py proof FILE        [--key VKEY | --key-file F]
  verify.py consistency FILE  [--key VKEY | --key-file F]
  verify.py bundle DIR        [--key VKEY | --key-file F]

Prints one line per check group ("<group>: OK" or "<group>: FAIL: <first problem>"), then a final
line "OK" or "FAIL: <first problem>". Exit status: 0 all checks passed, 1 a check failed, 2 usage
error (bad arguments, unreadable or malformed input that is not a bundle at all).

Needs the `cryptography` package for Ed25519 (scripts/audit/verify.sh makes a virtualenv with it).
"""

import argparse
import base64
import binascii
import hashlib
import json
import os
import re
import sys
import unicodedata

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
except ImportError:  # pragma: no cover - reported at run time
    Ed25519PublicKey = None
    InvalidSignature = Exception

PROOF_FORMAT = "ferrotune-tlog-proof/v1"
CONSISTENCY_FORMAT = "ferrotune-tlog-consistency/v1"
HASH_LEN = 32
ED25519_TYPE = 0x01
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = HASH() (RFC 9162 §2.1.1)
MAX_SIGNATURES = 100  # C2SP: verifiers SHOULD limit, MUST accept at least 16 (Go uses 100)


class VerifyError(Exception):
    """A check failed; the message names the first problem."""


class UsageError(Exception):
    """Bad arguments or input that cannot be read at all (exit 2)."""


# ---------------------------------------------------------------------------------------------
# RFC 9162 §2.1 Merkle tree hashes and proof verification
# ---------------------------------------------------------------------------------------------

def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 §2.1.1: MTH({d(0)}) = HASH(0x00 || d(0))."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _lsb(x: int) -> bool:
    return (x & 1) == 1


def verify_inclusion(leaf_index: int, tree_size: int, hash_: bytes, inclusion_path, root_hash: bytes):
    """RFC 9162 §2.1.3.2, step by step. Raises VerifyError on failure."""
    # 1. If leaf_index is greater than or equal to tree_size, fail the proof verification.
    if leaf_index < 0 or leaf_index >= tree_size:
        raise VerifyError(f"leaf index {leaf_index} is not below tree size {tree_size}")
    # 2. Set fn to leaf_index and sn to tree_size - 1.
    fn, sn = leaf_index, tree_size - 1
    # 3. Set r to hash.
    r = hash_
    # 4. For each value p in the inclusion_path array:
    for p in inclusion_path:
        # a. If sn is 0, stop the iteration and fail the proof verification.
        if sn == 0:
            raise VerifyError("inclusion proof is longer than the tree is deep")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if _lsb(fn) or fn == sn:
            # i. Set r to HASH(0x01 || p || r).
            r = node_hash(p, r)
            # ii. If LSB(fn) is not set, right-shift both fn and sn equally until either
            #     LSB(fn) is set or fn is 0.
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: i. Set r to HASH(0x01 || r || p).
            r = node_hash(r, p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0. Compare r against the root_hash. If sn is equal to 0 and r and the
    #    root_hash are equal, then the log has proven the inclusion of hash. Otherwise, fail.
    if sn != 0:
        raise VerifyError("inclusion proof is shorter than the tree is deep")
    if r != root_hash:
        raise VerifyError("inclusion proof does not lead to the checkpoint's root hash")


def verify_consistency(first: int, second: int, first_hash: bytes, second_hash: bytes, consistency_path):
    """RFC 9162 §2.1.4.2, step by step, for 0 < first < second. Raises VerifyError on failure.

    The RFC defines consistency proofs for 0 < m < n only (§2.1.4.1). For the edge cases this
    does what transparency-dev/merkle's verifier does: first == second needs an empty proof and
    equal roots; first == 0 needs an empty proof (an empty tree is a prefix of every tree).
    """
    if first < 0 or second < 0:
        raise VerifyError("negative tree size")
    if first > second:
        raise VerifyError(f"old size {first} is larger than new size {second}")
    if first == second:
        if len(consistency_path) != 0:
            raise VerifyError(f"consistency proof between equal sizes {first} must be empty")
        if first_hash != second_hash:
            raise VerifyError(f"two different root hashes for tree size {first} (fork)")
        return
    if first == 0:
        if len(consistency_path) != 0:
            raise VerifyError("consistency proof from the empty tree must be empty")
        return
    path = list(consistency_path)
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not path:
        raise VerifyError("consistency proof is empty")
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path array.
    if first & (first - 1) == 0:
        path.insert(0, first_hash)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = first - 1, second - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise VerifyError("consistency proof is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if _lsb(fn) or fn == sn:
            # i. Set fr to HASH(0x01 || c || fr).  ii. Set sr to HASH(0x01 || c || sr).
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # iii. If LSB(fn) is not set, then right-shift both fn and sn equally until either
            #      LSB(fn) is set or fn is 0.
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            # Otherwise: i. Set sr to HASH(0x01 || sr || c).
            sr = node_hash(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. After completing iterating through the consistency_path array as described above,
    #    verify that the fr calculated is equal to the first_hash supplied, that the sr
    #    calculated is equal to the second_hash supplied, and that sn is 0.
    if sn != 0:
        raise VerifyError("consistency proof is too short")
    if fr != first_hash:
        raise VerifyError(f"consistency proof does not lead to the old root (size {first})")
    if sr != second_hash:
        raise VerifyError(f"consistency proof does not lead to the new root (size {second})")


# ---------------------------------------------------------------------------------------------
# Encodings
# ---------------------------------------------------------------------------------------------

def b64decode_strict(s, what: str) -> bytes:
    """Standard base64 (RFC 4648 §4) with padding; rejects anything that does not re-encode
    to the same text."""
    if not isinstance(s, str):
        raise VerifyError(f"{what} is not a base64 string")
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise VerifyError(f"{what} is not valid base64: {s!r}") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise VerifyError(f"{what} is not canonical base64: {s!r}")
    return raw


def decode_hash(s, what: str) -> bytes:
    raw = b64decode_strict(s, what)
    if len(raw) != HASH_LEN:
        raise VerifyError(f"{what} is {len(raw)} bytes, not {HASH_LEN}")
    return raw


def decode_hashes(lst, what: str):
    if not isinstance(lst, list):
        raise VerifyError(f"{what} is not a list of base64 hashes")
    return [decode_hash(h, f"{what}[{i}]") for i, h in enumerate(lst)]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def want_int(obj, key: str, what: str) -> int:
    v = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise VerifyError(f"{what}: {key!r} is missing or not a non-negative integer")
    return v


def want_str(obj, key: str, what: str) -> str:
    v = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(v, str):
        raise VerifyError(f"{what}: {key!r} is missing or not a string")
    return v


# ---------------------------------------------------------------------------------------------
# Canonical JSON entries
# ---------------------------------------------------------------------------------------------

def _reject_float(s):
    raise VerifyError(f"contains a floating-point number ({s})")


def _reject_constant(s):
    raise VerifyError(f"contains the non-JSON constant {s}")


def _pairs_no_duplicates(pairs):
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise VerifyError(f"has the key {k!r} twice in one object")
        seen.add(k)
    return dict(pairs)


def check_canonical_entry(line: bytes):
    """An entry must be canonical JSON: parsing it and re-serialising it with sorted keys,
    separators (',', ':'), no ASCII escaping of non-ASCII characters and no floats gives back
    exactly the same bytes. Returns the parsed object."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VerifyError(f"is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        obj = json.loads(text, parse_float=_reject_float, parse_constant=_reject_constant,
                         object_pairs_hook=_pairs_no_duplicates)
    except json.JSONDecodeError as e:
        raise VerifyError(f"is not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise VerifyError("is not a JSON object")
    try:
        again = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        raise VerifyError("contains an escaped lone surrogate (not representable in UTF-8)") from None
    if again != line:
        i = next((k for k in range(min(len(again), len(line))) if again[k] != line[k]),
                 min(len(again), len(line)))
        got = line[max(0, i - 12):i + 12].decode("utf-8", "replace")
        want = again[max(0, i - 12):i + 12].decode("utf-8", "replace")
        raise VerifyError(f"is not canonical JSON: first difference at byte {i}: "
                          f"has {got!r}, canonical form has {want!r}")
    return obj


# ---------------------------------------------------------------------------------------------
# C2SP signed notes, verifier keys, checkpoints
# ---------------------------------------------------------------------------------------------

def _valid_key_name(name: str) -> bool:
    # C2SP: non-empty, no Unicode spaces, no '+'. (Go: unicode.IsSpace; Python's isspace also
    # covers the Zs category and the ASCII whitespace.)
    return (name != "" and "+" not in name
            and not any(c.isspace() or unicodedata.category(c) == "Zs" for c in name))


def key_id(name: str, sig_type: int, pubkey: bytes) -> bytes:
    """C2SP signed-note: key ID = SHA-256(key name || 0x0A || signature type || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + pubkey).digest()[:4]


class VerifierKey:
    def __init__(self, vkey: str):
        vkey = vkey.strip()
        self.text = vkey
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise VerifyError(f"verifier key {vkey!r} is not <name>+<hex id>+<base64 key>")
        name, hex_id, key64 = parts
        if not _valid_key_name(name):
            raise VerifyError(f"verifier key name {name!r} is empty or has spaces or '+'")
        if not re.fullmatch(r"[0-9a-fA-F]{8}", hex_id):
            raise VerifyError(f"verifier key id {hex_id!r} is not 8 hex digits")
        try:
            raw = base64.b64decode(key64.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise VerifyError("verifier key's public key is not valid base64") from None
        if len(raw) == 0:
            raise VerifyError("verifier key's public key is empty")
        if raw[0] != ED25519_TYPE:
            raise VerifyError(f"verifier key's signature type is 0x{raw[0]:02x}, not 0x01 (Ed25519)")
        pub = raw[1:]
        if len(pub) != 32:
            raise VerifyError(f"verifier key's Ed25519 public key is {len(pub)} bytes, not 32")
        want = key_id(name, ED25519_TYPE, pub)
        if bytes.fromhex(hex_id) != want:
            raise VerifyError(f"verifier key id {hex_id} does not match its name and public key "
                              f"(computed {want.hex()})")
        self.name = name
        self.id = want
        self.pub = pub
        if Ed25519PublicKey is None:
            raise UsageError("the Python package 'cryptography' is missing (use scripts/audit/verify.sh)")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(pub)
        except ValueError:
            raise VerifyError("verifier key's Ed25519 public key is invalid") from None

    def verify(self, msg: bytes, sig: bytes) -> bool:
        try:
            self._key.verify(sig, msg)
            return True
        except InvalidSignature:
            return False

    def __str__(self):
        return f"{self.name}+{self.id.hex()}"


SIG_PREFIX = "\u2014 ".encode("utf-8")  # em dash, space


def open_note(msg: bytes, key: VerifierKey, what: str) -> bytes:
    """Parse a C2SP signed note and verify it with `key`. Returns the note text (which includes
    its final newline). Raises VerifyError naming `what`."""
    try:
        s = msg.decode("utf-8")
    except UnicodeDecodeError:
        raise VerifyError(f"{what}: not valid UTF-8") from None
    for c in s:
        if ord(c) < 0x20 and c != "\n":
            raise VerifyError(f"{what}: contains the control character U+{ord(c):04X}")
    split = msg.rfind(b"\n\n")
    if split < 0:
        raise VerifyError(f"{what}: no blank line before the signatures")
    text, sigs = msg[:split + 1], msg[split + 2:]
    if len(sigs) == 0 or not sigs.endswith(b"\n"):
        raise VerifyError(f"{what}: no signature lines, or the last one does not end in a newline")
    found = 0
    n = 0
    for line in sigs[:-1].split(b"\n"):
        n += 1
        if n > MAX_SIGNATURES:
            raise VerifyError(f"{what}: more than {MAX_SIGNATURES} signatures")
        if not line.startswith(SIG_PREFIX):
            raise VerifyError(f"{what}: signature line {n} does not start with an em dash and a space")
        rest = line[len(SIG_PREFIX):].decode("utf-8")
        name, _, sig64 = rest.partition(" ")
        if not _valid_key_name(name) or sig64 == "":
            raise VerifyError(f"{what}: signature line {n} is malformed")
        try:
            sig = base64.b64decode(sig64.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise VerifyError(f"{what}: signature line {n} is not base64") from None
        if len(sig) < 5:
            raise VerifyError(f"{what}: signature line {n} is too short")
        if name != key.name or sig[:4] != key.id:
            continue  # C2SP: verifiers MUST ignore signatures from unknown keys
        if not key.verify(text, sig[4:]):
            raise VerifyError(f"{what}: invalid signature for key {key}")
        found += 1
    if found == 0:
        raise VerifyError(f"{what}: no signature by key {key}")
    return text


class Checkpoint:
    def __init__(self, origin: str, size: int, root: bytes, extensions):
        self.origin, self.size, self.root, self.extensions = origin, size, root, extensions


def parse_checkpoint(text: bytes, what: str) -> Checkpoint:
    """C2SP tlog-checkpoint note text: origin, tree size, base64 root hash, optional extension
    lines; at least three non-empty lines."""
    s = text.decode("utf-8")
    if not s.endswith("\n"):
        raise VerifyError(f"{what}: note text does not end in a newline")
    lines = s[:-1].split("\n")
    if len(lines) < 3:
        raise VerifyError(f"{what}: checkpoint has fewer than 3 lines")
    if any(l == "" for l in lines):
        raise VerifyError(f"{what}: checkpoint has an empty line")
    origin, size_s, root_s = lines[0], lines[1], lines[2]
    if not re.fullmatch(r"0|[1-9][0-9]*", size_s):
        raise VerifyError(f"{what}: tree size {size_s!r} is not a decimal number without leading zeros")
    root = decode_hash(root_s, f"{what}: root hash")
    if size_s == "0" and root != EMPTY_ROOT:
        raise VerifyError(f"{what}: tree size 0 but the root is not SHA-256 of nothing")
    return Checkpoint(origin, int(size_s), root, lines[3:])


def open_checkpoint(msg, key: VerifierKey, what: str) -> Checkpoint:
    if isinstance(msg, str):
        msg = msg.encode("utf-8")
    if not isinstance(msg, (bytes, bytearray)):
        raise VerifyError(f"{what}: not a signed note string")
    text = open_note(bytes(msg), key, what)
    return parse_checkpoint(text, what)


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

class Report:
    def __init__(self, out):
        self.out = out
        self.first_failure = None

    def warn(self, msg):
        print(f"WARNING: {msg}", file=self.out)

    def info(self, msg):
        print(f"note: {msg}", file=self.out)

    def group(self, name, fn, *args, detail=None):
        """Run one check group; print its line. Returns fn's value, or None if it failed.
        `detail(value)` may add a parenthesised note to the OK line."""
        try:
            value = fn(*args)
        except VerifyError as e:
            print(f"{name}: FAIL: {e}", file=self.out)
            if self.first_failure is None:
                self.first_failure = f"{name}: {e}"
            return None
        extra = f" ({detail(value)})" if detail is not None else ""
        print(f"{name}: OK{extra}", file=self.out)
        return value

    def skip(self, name, because):
        print(f"{name}: SKIPPED ({because})", file=self.out)

    def finish(self) -> int:
        if self.first_failure is None:
            print("OK", file=self.out)
            return 0
        print(f"FAIL: {self.first_failure}", file=self.out)
        return 1


def _key_from_args(args, bundled, report: Report, where: str) -> VerifierKey:
    """The pinned key (--key / --key-file), else the bundle's own key with a warning."""
    if args.key is not None:
        pinned = args.key
    elif args.key_file is not None:
        try:
            with open(args.key_file, "r", encoding="utf-8") as f:
                pinned = f.read().strip()
        except OSError as e:
            raise UsageError(f"cannot read --key-file: {e}") from None
    else:
        pinned = None
    if pinned is None:
        if not isinstance(bundled, str) or not bundled.strip():
            raise VerifyError(f"no --key given and {where} has no verifier key")
        report.warn(f"no --key/--key-file given: using the verifier key from {where}, which pins "
                    "nothing (whoever edited the bundle could have replaced it). An auditor should "
                    "pass the log's verifier key obtained out of band.")
        return VerifierKey(bundled)
    try:
        key = VerifierKey(pinned)
    except VerifyError as e:
        raise UsageError(f"the key given with --key/--key-file is unusable: {e}") from None
    if isinstance(bundled, str) and bundled.strip() and bundled.strip() != key.text:
        report.warn(f"{where} names a different verifier key ({bundled.strip()!r}); it is ignored, "
                    f"signatures are checked with the pinned key {key}")
    return key


def _load_json_file(path: str, what: str):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {what}: {e}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{what} is not JSON: {e}") from None


# ---------------------------------------------------------------------------------------------
# proof: one entry's inclusion bundle
# ---------------------------------------------------------------------------------------------

def cmd_proof(args, report: Report) -> int:
    b = _load_json_file(args.path, args.path)
    if not isinstance(b, dict):
        raise UsageError(f"{args.path} is not a JSON object")
    print(f"ferrotune audit verifier: inclusion proof bundle {args.path}", file=report.out)

    def fmt():
        if b.get("format") != PROOF_FORMAT:
            raise VerifyError(f"format is {b.get('format')!r}, not {PROOF_FORMAT!r}")
        origin = want_str(b, "origin", "bundle")
        index = want_int(b, "index", "bundle")
        size = want_int(b, "size", "bundle")
        entry = want_str(b, "entry", "bundle")
        given_leaf = decode_hash(b.get("leaf_hash"), "leaf_hash")
        path = decode_hashes(b.get("inclusion"), "inclusion")
        return origin, index, size, entry, given_leaf, path

    parsed = report.group("bundle fields", fmt)
    key = report.group("verifier key", _key_from_args, args, b.get("verifier_key"), report,
                       "the bundle", detail=str)
    if parsed is None:
        return report.finish()
    origin, index, size, entry, given_leaf, path = parsed
    entry_bytes = entry.encode("utf-8")

    cp = None
    if key is None:
        report.skip("checkpoint signature", "no usable verifier key")
    else:
        cp = report.group("checkpoint signature", open_checkpoint, b.get("checkpoint"), key,
                          f"checkpoint (size {size})")

    def origin_and_size():
        if cp.origin != origin:
            raise VerifyError(f"checkpoint origin {cp.origin!r} is not the bundle's origin {origin!r}")
        if cp.size != size:
            raise VerifyError(f"checkpoint size {cp.size} is not the bundle's size {size}")

    if cp is not None:
        report.group("checkpoint origin and size", origin_and_size)
    else:
        report.skip("checkpoint origin and size", "checkpoint not verified")

    def canonical():
        if "\n" in entry:
            raise VerifyError(f"entry {index} contains a newline")
        try:
            check_canonical_entry(entry_bytes)
        except VerifyError as e:
            raise VerifyError(f"entry {index} {e}") from None

    report.group("entry canonical JSON", canonical)

    def leaf():
        got = leaf_hash(entry_bytes)
        if got != given_leaf:
            raise VerifyError(f"entry {index}: SHA-256(0x00 || entry) is {b64(got)}, "
                              f"the bundle says {b64(given_leaf)}")
        return got

    computed_leaf = report.group("leaf hash", leaf)

    def inclusion():
        try:
            verify_inclusion(index, cp.size, computed_leaf, path, cp.root)
        except VerifyError as e:
            raise VerifyError(f"entry {index} in tree size {cp.size}: {e}") from None

    if cp is None or computed_leaf is None:
        report.skip("inclusion proof", "needs a verified checkpoint and leaf hash")
    else:
        report.group("inclusion proof", inclusion,
                     detail=lambda _: f"entry {index} in tree size {cp.size}")
    return report.finish()


# ---------------------------------------------------------------------------------------------
# consistency: two tree heads
# ---------------------------------------------------------------------------------------------

def cmd_consistency(args, report: Report) -> int:
    b = _load_json_file(args.path, args.path)
    if not isinstance(b, dict):
        raise UsageError(f"{args.path} is not a JSON object")
    print(f"ferrotune audit verifier: consistency bundle {args.path}", file=report.out)

    def fmt():
        if b.get("format") != CONSISTENCY_FORMAT:
            raise VerifyError(f"format is {b.get('format')!r}, not {CONSISTENCY_FORMAT!r}")
        origin = want_str(b, "origin", "bundle")
        old_size = want_int(b, "old_size", "bundle")
        new_size = want_int(b, "new_size", "bundle")
        old_root = decode_hash(b.get("old_root"), "old_root")
        new_root = decode_hash(b.get("new_root"), "new_root")
        proof = decode_hashes(b.get("proof"), "proof")
        for k in ("old_checkpoint", "new_checkpoint"):
            if k not in b:
                raise VerifyError(f"bundle: {k!r} is missing (null when there is none)")
        return origin, old_size, new_size, old_root, new_root, proof

    parsed = report.group("bundle fields", fmt)
    key = report.group("verifier key", _key_from_args, args, b.get("verifier_key"), report,
                       "the bundle", detail=str)
    if parsed is None:
        return report.finish()
    origin, old_size, new_size, old_root, new_root, proof = parsed

    def checkpoint(field, size, root):
        cp = open_checkpoint(b[field], key, f"{field} (size {size})")
        if cp.origin != origin:
            raise VerifyError(f"{field}: origin {cp.origin!r} is not the bundle's origin {origin!r}")
        if cp.size != size:
            raise VerifyError(f"{field}: size {cp.size} is not the bundle's {size}")
        if cp.root != root:
            raise VerifyError(f"{field} (size {size}): root {b64(cp.root)} is not the bundle's "
                              f"{b64(root)}")

    signed = 0
    for field, size, root in (("old_checkpoint", old_size, old_root),
                              ("new_checkpoint", new_size, new_root)):
        if b.get(field) is None:
            report.skip(field, "none in the bundle")
        elif key is None:
            report.skip(field, "no usable verifier key")
        else:
            report.group(field, checkpoint, field, size, root)
            signed += 1
    if signed == 0:
        report.warn("the bundle has no signed checkpoint: the proof only relates the two root "
                    "hashes given, which nothing here vouches for; compare them with checkpoints "
                    "you hold")

    def consistency():
        verify_consistency(old_size, new_size, old_root, new_root, proof)

    report.group(f"consistency proof {old_size} -> {new_size}", consistency)
    return report.finish()


# ---------------------------------------------------------------------------------------------
# bundle: an export folder
# ---------------------------------------------------------------------------------------------

def _read_bytes(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise VerifyError(f"cannot read {what}: {e.strerror}") from None


def _jsonl(data: bytes, what: str):
    if data and not data.endswith(b"\n"):
        raise VerifyError(f"{what}: last line does not end in a newline")
    out = []
    for n, line in enumerate(data.split(b"\n")[:-1] if data else [], 1):
        try:
            out.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VerifyError(f"{what}: line {n} is not JSON ({e})") from None
    return out


def cmd_bundle(args, report: Report) -> int:
    d = args.path
    if not os.path.isdir(d):
        raise UsageError(f"{d} is not a directory")
    print(f"ferrotune audit verifier: export folder {d}", file=report.out)
    p = lambda name: os.path.join(d, name)  # noqa: E731

    bundled_key = None
    if os.path.exists(p("verifier.key")):
        try:
            bundled_key = _read_bytes(p("verifier.key"), "verifier.key").decode("utf-8").strip()
        except (VerifyError, UnicodeDecodeError):
            bundled_key = None
    key = report.group("verifier key", _key_from_args, args, bundled_key, report, "verifier.key",
                       detail=str)

    def range_json():
        try:
            r = json.loads(_read_bytes(p("range.json"), "range.json").decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VerifyError(f"range.json is not JSON ({e})") from None
        if not isinstance(r, dict):
            raise VerifyError("range.json is not a JSON object")
        origin = want_str(r, "origin", "range.json")
        count = want_int(r, "count", "range.json")
        if count == 0 and r.get("first") is None and r.get("last") is None:
            return origin, None, None, 0
        first = want_int(r, "first", "range.json")
        last = want_int(r, "last", "range.json")
        if last < first:
            raise VerifyError(f"range.json: last {last} is below first {first}")
        if count != last - first + 1:
            raise VerifyError(f"range.json: count {count} is not last - first + 1 = {last - first + 1}")
        return origin, first, last, count

    rng = report.group("range.json", range_json)

    def entries():
        data = _read_bytes(p("entries.log"), "entries.log")
        if data and not data.endswith(b"\n"):
            raise VerifyError("entries.log: the last entry does not end in a newline")
        lines = data.split(b"\n")[:-1] if data else []
        origin, first, last, count = rng
        if len(lines) != count:
            raise VerifyError(f"entries.log has {len(lines)} entries, range.json says {count}")
        for i, line in enumerate(lines):
            if line.endswith(b"\r"):
                raise VerifyError(f"entry {first + i} ends in a carriage return")
            try:
                check_canonical_entry(line)
            except VerifyError as e:
                raise VerifyError(f"entry {first + i} {e}") from None
        return lines

    if rng is None:
        report.skip("entries.log", "range.json not usable")
        lines = None
    else:
        lines = report.group("entries.log (count, canonical JSON)", entries,
                             detail=lambda ls: f"{len(ls)} entries"
                             + (f", {rng[1]}..{rng[2]}" if ls else ""))

    def head():
        cp = open_checkpoint(_read_bytes(p("checkpoint.note"), "checkpoint.note"), key, "checkpoint.note")
        origin, first, last, count = rng
        if cp.origin != origin:
            raise VerifyError(f"checkpoint.note: origin {cp.origin!r} is not range.json's {origin!r}")
        if last is not None and cp.size <= last:
            raise VerifyError(f"checkpoint.note: tree size {cp.size} does not cover entry {last}")
        return cp

    cp = None
    if key is None or rng is None:
        report.skip("checkpoint.note", "needs a verifier key and range.json")
    else:
        cp = report.group("checkpoint.note (signature, origin, size)", head,
                          detail=lambda c: f"tree size {c.size}")

    def inclusion():
        origin, first, last, count = rng
        proofs = _jsonl(_read_bytes(p("inclusion.jsonl"), "inclusion.jsonl"), "inclusion.jsonl")
        if len(proofs) != count:
            raise VerifyError(f"inclusion.jsonl has {len(proofs)} lines, range.json says {count} entries")
        for i, (line, pr) in enumerate(zip(lines, proofs)):
            index = first + i
            what = f"inclusion.jsonl line {i + 1}"
            if not isinstance(pr, dict):
                raise VerifyError(f"{what} is not a JSON object")
            if want_int(pr, "index", what) != index:
                raise VerifyError(f"{what}: index {pr['index']} where entry {index} was expected "
                                  "(entries out of order or missing)")
            given = decode_hash(pr.get("leaf_hash"), f"entry {index}: leaf_hash")
            got = leaf_hash(line)
            if got != given:
                raise VerifyError(f"entry {index}: SHA-256(0x00 || entry) is {b64(got)}, "
                                  f"inclusion.jsonl says {b64(given)}")
            path = decode_hashes(pr.get("inclusion"), f"entry {index}: inclusion")
            try:
                verify_inclusion(index, cp.size, got, path, cp.root)
            except VerifyError as e:
                raise VerifyError(f"entry {index} in tree size {cp.size}: {e}") from None

    if cp is None or lines is None:
        report.skip("inclusion.jsonl (leaf hashes, inclusion proofs)",
                    "needs checkpoint.note and entries.log")
    else:
        report.group("inclusion.jsonl (leaf hashes, inclusion proofs)", inclusion,
                     detail=lambda _: f"{rng[3]} entries in tree size {cp.size}")

    def stored():
        cdir = p("checkpoints")
        if not os.path.isdir(cdir):
            raise VerifyError("checkpoints/ is missing")
        origin = rng[0]
        cps = []
        for name in sorted(os.listdir(cdir)):
            m = re.fullmatch(r"([0-9]{12,})\.note", name)
            if not m:
                raise VerifyError(f"checkpoints/{name}: not named <size, 12 digits>.note")
            size = int(m.group(1))
            if f"{size:012d}.note" != name:
                raise VerifyError(f"checkpoints/{name}: size has extra leading zeros")
            what = f"checkpoint {size} (checkpoints/{name})"
            c = open_checkpoint(_read_bytes(os.path.join(cdir, name), what), key, what)
            if c.size != size:
                raise VerifyError(f"{what}: its tree size is {c.size}")
            if c.origin != origin:
                raise VerifyError(f"{what}: origin {c.origin!r} is not range.json's {origin!r}")
            cps.append(c)
        cps.sort(key=lambda c: c.size)
        if not cps:
            raise VerifyError("checkpoints/ holds no checkpoint")
        if cp is not None:
            same = [c for c in cps if c.size == cp.size]
            if same and same[0].root != cp.root:
                raise VerifyError(f"checkpoint {cp.size}: checkpoints/ and checkpoint.note have "
                                  "different roots for the same size (fork)")
            if not same:
                report.warn(f"checkpoint.note's size {cp.size} is not among checkpoints/; its "
                            "consistency with them is not proven here")
        return cps

    cps = None
    if key is None or rng is None:
        report.skip("checkpoints/ (signatures, origin, sizes)", "needs a verifier key and range.json")
    else:
        cps = report.group("checkpoints/ (signatures, origin, sizes)", stored,
                           detail=lambda cs: f"{len(cs)} checkpoints, sizes {cs[0].size}..{cs[-1].size}")

    def consistency():
        if len(cps) == 1 and not os.path.exists(p("consistency.jsonl")):
            return
        proofs = _jsonl(_read_bytes(p("consistency.jsonl"), "consistency.jsonl"), "consistency.jsonl")
        if len(proofs) != len(cps) - 1:
            raise VerifyError(f"consistency.jsonl has {len(proofs)} proofs for {len(cps)} stored "
                              f"checkpoints (want {len(cps) - 1})")
        for i, pr in enumerate(proofs):
            old, new = cps[i], cps[i + 1]
            what = f"consistency.jsonl line {i + 1}"
            if not isinstance(pr, dict):
                raise VerifyError(f"{what} is not a JSON object")
            o, n = want_int(pr, "old_size", what), want_int(pr, "new_size", what)
            if (o, n) != (old.size, new.size):
                raise VerifyError(f"{what}: sizes {o} -> {n}, but the successive stored "
                                  f"checkpoints are {old.size} -> {new.size}")
            proof = decode_hashes(pr.get("proof"), f"{what}: proof")
            try:
                verify_consistency(old.size, new.size, old.root, new.root, proof)
            except VerifyError as e:
                raise VerifyError(f"checkpoint {old.size} -> checkpoint {new.size}: {e}") from None

    if not cps:
        report.skip("consistency.jsonl (successive checkpoints)", "needs the stored checkpoints")
    else:
        report.group("consistency.jsonl (successive checkpoints)", consistency)

    if not os.path.exists(p("README.txt")):
        report.info("README.txt is missing (not a check)")
    return report.finish()


# ---------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None, out=None) -> int:
    out = out or sys.stdout
    ap = _Parser(prog="verify.py", description=__doc__.split("\n\n")[0],
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    for name, hlp in (("proof", "an inclusion proof bundle (audit prove N), a JSON file"),
                      ("consistency", "a consistency bundle (audit consistency OLD [NEW]), a JSON file"),
                      ("bundle", "an export folder (audit export --out DIR)")):
        sp = sub.add_parser(name, help=hlp)
        sp.add_argument("path", metavar="DIR" if name == "bundle" else "FILE")
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--key", help="the log's verifier key <name>+<hex id>+<base64 key>, "
                       "obtained out of band")
        g.add_argument("--key-file", help="a file holding the verifier key")
    args = ap.parse_args(argv)
    report = Report(out)
    try:
        if Ed25519PublicKey is None:
            raise UsageError("the Python package 'cryptography' is missing "
                             "(run scripts/audit/verify.sh, which makes a virtualenv with it)")
        return {"proof": cmd_proof, "consistency": cmd_consistency,
                "bundle": cmd_bundle}[args.cmd](args, report)
    except UsageError as e:
        print(f"verify.py: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a malformed input this verifier did not foresee: never "OK"
        import traceback
        traceback.print_exc()
        print(f"FAIL: could not complete the checks: {type(e).__name__}: {e}", file=out)
        return 1


if __name__ == "__main__":
    sys.exit(main())
