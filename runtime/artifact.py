"""Artifact directories, written atomically and read back verified. An artifact holds native code: whoever can
change its files can run code in the process that loads it, so nothing in it is used before it is checked.

Layout: `manifest.json` lists every other file of the directory with its size and sha256 (`files`), names the
artifact's `kind` (what loads it: "module", and kinds added later, e.g. "decoder") and holds the kind's own
fields; `manifest.sig`, when present, is an ed25519 signature of the manifest's exact bytes. The manifest's own
sha256 identifies the whole artifact (`Artifact.manifest_sha256`), so a deployment can pin it.

Writing (`write_artifact`): the kind's writer fills a fresh staging directory beside the destination, every file
it wrote is hashed into the manifest, and the staging directory is renamed into place (same filesystem). The
destination must be new, an empty directory, or an existing actsparse artifact (recognized by its manifest and
holding nothing it does not list) — anything else is refused, never deleted. On any error the staging
directory is removed and an artifact being replaced is put back.

Reading (`read_artifact`): every path is confined to the directory (names are plain relative paths; symlinks
and special files are refused), every file present must be listed and every listed file present, and each is
read once into memory and checked against its size and hash — the bytes checked are the bytes used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactError

FORMAT = "actsparse-artifact/2"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 16 << 20
MAX_FILES = 4096
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")  # one path component: no "..", no leading dot or dash
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict
    manifest_sha256: str  # pin it: load(path, expect_sha256=...)
    files: dict[str, bytes]  # every listed file's verified contents (but the STREAMED ones)
    signed: bool  # the signature was checked against a public key
    streamed: dict[str, Path] = field(default_factory=dict)  # STREAMED files: verified by a streaming hash, not read


# files too big to hold in memory while verifying (the cold neurons of a hot/cold split): hashed as a stream and
# left on disk, where their user maps them (runtime/cold_store.py)
STREAMED = ("cold.bin",)


# -- writing ---------------------------------------------------------------------------------------------------
def write_artifact(path, kind: str, write: Callable[[Path], dict], signing_key=None) -> Path:
    """`write(staging_dir)` writes the kind's files and returns its manifest fields; returns the artifact's path."""
    path = check_destination(path)
    signer = _private_key(signing_key) if signing_key is not None else None
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    try:
        fields = write(staging)
        files = {name: {"bytes": (staging / name).stat().st_size, "sha256": _sha256_file(staging / name)}
                 for name in _listing(staging)}
        data = json.dumps({"format": FORMAT, "kind": kind, **fields, "files": files}, indent=2).encode()
        (staging / MANIFEST).write_bytes(data)
        if signer is not None:
            (staging / SIGNATURE).write_bytes(signer.sign(data))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp made it private; an artifact is an ordinary directory
        _move_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def check_destination(path) -> Path:
    """The path a save may write: new, an empty directory, or an actsparse artifact it replaces. Call it before
    long work (compiling) so a refused destination fails fast."""
    if str(path).strip() in ("", "."):
        raise ArtifactError(f"refusing to save an artifact to {str(path)!r} (the current directory); give a new "
                            "directory path such as out/model.actsparse")
    path = Path(os.path.abspath(path))
    cwd = Path.cwd()
    if path == cwd or path in cwd.parents:
        raise ArtifactError(f"refusing to save an artifact to {path}: it is the current directory or one of its "
                            "parents; give a new directory path such as out/model.actsparse")
    if path.is_symlink():
        raise ArtifactError(f"refusing to save an artifact to {path}: it is a symbolic link; give a new path")
    if path.exists():
        if not path.is_dir():
            raise ArtifactError(f"refusing to save an artifact to {path}: a file of that name exists; give a new "
                                "directory path (or remove the file yourself)")
        why = _not_an_artifact(path)
        if why:
            raise ArtifactError(f"refusing to replace {path}: it exists and is not an actsparse artifact ({why}); "
                                "give a new directory path (or remove it yourself)")
    return path


def _not_an_artifact(path: Path) -> str:
    """Why an existing directory may not be replaced ("" when it may: empty, or an artifact and nothing else)."""
    present = set(_listing(path, refuse=False))
    if not present:
        return ""
    try:
        manifest = json.loads((path / MANIFEST).read_bytes()) if _is_regular(path / MANIFEST) else None
    except (ValueError, RecursionError):
        manifest = None
    if not isinstance(manifest, dict) or not str(manifest.get("format", "")).startswith("actsparse-artifact/"):
        return f"no actsparse {MANIFEST}"
    listed = manifest.get("files") or manifest.get("sha256") or {}  # format 1 listed hashes under "sha256"
    listed = {*listed, MANIFEST, SIGNATURE} if isinstance(listed, dict) else {MANIFEST, SIGNATURE}
    extra = sorted(present - listed)
    return f"it also holds {', '.join(extra[:3])}{', ...' if len(extra) > 3 else ''}" if extra else ""


def _move_into_place(staging: Path, path: Path) -> None:
    if not os.path.lexists(path):
        os.rename(staging, path)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.rename(path, aside)  # an empty directory is replaced by the rename
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- reading ---------------------------------------------------------------------------------------------------
def read_artifact(path, kinds: tuple[str, ...] | None = None, expect_sha256: str | None = None,
                  public_key=None) -> Artifact:
    """Read and verify an artifact directory; raises ArtifactError naming the first problem."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path} is not an actsparse artifact (not a directory); build one with "
                            "`actsparse build` or CompiledModule.save()")
    present = _listing(path)
    if MANIFEST not in present:
        raise ArtifactError(f"{path} is not an actsparse artifact (no {MANIFEST}); build one with "
                            "`actsparse build` or CompiledModule.save()")
    data = _read(path, MANIFEST, MAX_MANIFEST_BYTES)
    digest = hashlib.sha256(data).hexdigest()
    if expect_sha256 is not None and digest != str(expect_sha256).strip().lower():
        raise ArtifactError(f"{path}: manifest sha256 is {digest}, not the expected {expect_sha256}; this is not "
                            "the artifact you pinned")
    if public_key is not None:
        _verify_signature(path, data, public_key, SIGNATURE in present)
    manifest = _parse_manifest(path, data, kinds)
    listed = manifest["files"]
    missing = sorted(set(listed) - set(present))
    if missing:
        raise ArtifactError(f"{path}: {missing[0]} is missing; rebuild the artifact")
    unlisted = sorted(set(present) - set(listed) - {MANIFEST, SIGNATURE})
    if unlisted:
        raise ArtifactError(f"{path}: {unlisted[0]} is not listed in the manifest (an artifact holds only the "
                            "files it lists, each hashed); remove it or rebuild the artifact")
    files, streamed = {}, {}
    for name, entry in listed.items():
        if name in STREAMED:
            file = path / name
            if not _is_regular(file) or file.stat().st_size != entry["bytes"] or _sha256_file(file) != entry["sha256"]:
                raise ArtifactError(f"{path}: {name} does not match its checksum (corrupted or edited); rebuild it")
            streamed[name] = file
            continue
        content = _read(path, name, entry["bytes"])
        if len(content) != entry["bytes"] or hashlib.sha256(content).hexdigest() != entry["sha256"]:
            raise ArtifactError(f"{path}: {name} does not match its checksum (corrupted or edited); rebuild it")
        files[name] = content
    return Artifact(path, manifest, digest, files, public_key is not None, streamed)


def manifest_error(path, err: BaseException) -> ArtifactError:
    """A kind's loader found a malformed field: one error naming it."""
    detail = f"{type(err).__name__}: {err}" if not isinstance(err, ArtifactError) else str(err)
    return ArtifactError(f"{path}: malformed {MANIFEST} ({detail[:300]}); rebuild the artifact")


def _parse_manifest(path: Path, data: bytes, kinds) -> dict:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ArtifactError(f"{path}/{MANIFEST} is corrupted ({type(err).__name__}: {str(err)[:200]}); "
                            "rebuild the artifact") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}/{MANIFEST} is corrupted (not a JSON object); rebuild the artifact")
    if manifest.get("format") != FORMAT:
        found = manifest.get("format")
        why = " (written before every file was hashed)" if found == "actsparse-artifact/1" else ""
        raise ArtifactError(f"{path}: format {str(found)[:60]!r} is not {FORMAT!r}{why}; rebuild the artifact")
    kind = manifest.get("kind")
    if kinds is not None and kind not in kinds:
        raise ArtifactError(f"{path}: artifact kind {str(kind)[:60]!r} is not one this loader reads "
                            f"({', '.join(kinds)})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files or len(files) > MAX_FILES:
        raise ArtifactError(f"{path}/{MANIFEST}: 'files' must list the artifact's files; rebuild the artifact")
    for name, entry in files.items():
        if not safe_name(name) or name in (MANIFEST, SIGNATURE):
            raise ArtifactError(f"{path}/{MANIFEST}: file name {name[:80]!r} is not a plain relative path inside "
                                "the artifact; refusing it")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and _SHA256.fullmatch(entry["sha256"]) and type(entry.get("bytes")) is int and entry["bytes"] >= 0):
            raise ArtifactError(f"{path}/{MANIFEST}: entry of {name} needs 'sha256' (64 hex digits) and 'bytes'; "
                                "rebuild the artifact")
    return manifest


def safe_name(name) -> bool:
    """A plain relative path inside the artifact: no absolute path, no '..', no hidden or odd names."""
    return isinstance(name, str) and len(name) < 256 and all(_NAME.fullmatch(p) for p in name.split("/"))


def _listing(root: Path, refuse: bool = True) -> list[str]:
    """Relative names of the regular files under `root`; a symlink or special file is an error (`refuse`)."""
    names, stack = [], [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as err:
            if not refuse:
                return names
            raise ArtifactError(f"{root}: cannot list {folder}: {err.strerror}") from None
        for entry in entries:
            name = prefix + entry.name
            if entry.is_symlink() or not (entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)):
                if refuse:
                    what = "a symbolic link" if entry.is_symlink() else "not a regular file"
                    raise ArtifactError(f"{root}: {name} is {what}; an artifact holds only regular files")
                names.append(name)
            elif entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), name + "/"))
            else:
                names.append(name)
            if len(names) > MAX_FILES:
                if refuse:
                    raise ArtifactError(f"{root}: more than {MAX_FILES} files; not an actsparse artifact")
                return names
    return names


def _is_regular(file: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(file).st_mode)
    except OSError:
        return False


def _read(root: Path, name: str, limit: int) -> bytes:
    """The file's bytes, opened without following a symlink, reading at most `limit` + 1 bytes."""
    try:
        fd = os.open(root / name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise ArtifactError(f"{root}: cannot open {name}: {err.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ArtifactError(f"{root}: {name} is not a regular file")
        content = f.read(limit + 1) if info.st_size <= limit else b""  # a huge file is not read into memory
    if info.st_size > limit or len(content) > limit:
        what = f"{limit} bytes" if name == MANIFEST else "its manifest says"
        raise ArtifactError(f"{root}: {name} is larger than {what}; rebuild the artifact")
    return content


def _sha256_file(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- signing (ed25519, the `cryptography` package) ---------------------------------------------------------------
def _private_key(key):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if isinstance(key, Ed25519PrivateKey):
        return key
    try:
        loaded = serialization.load_pem_private_key(_key_bytes(key, "signing key"), password=None)
    except (ValueError, TypeError) as err:
        raise ArtifactError(f"signing key {str(key)[:80]} is not an unencrypted PEM private key ({err}); make one "
                            "with `openssl genpkey -algorithm ed25519 -out key.pem`") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ArtifactError(f"signing key {str(key)[:80]} is not an ed25519 key; make one with "
                            "`openssl genpkey -algorithm ed25519 -out key.pem`")
    return loaded


def _verify_signature(path: Path, data: bytes, key, present: bool) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(key, Ed25519PublicKey):
        try:
            key = serialization.load_pem_public_key(_key_bytes(key, "public key"))
        except (ValueError, TypeError) as err:
            raise ArtifactError(f"public key {str(key)[:80]} is not a PEM public key ({err}); derive it with "
                                "`openssl pkey -in key.pem -pubout -out key.pub`") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ArtifactError("public key is not an ed25519 key")
    if not present:
        raise ArtifactError(f"{path} is not signed (no {SIGNATURE}) but a public key was given; build it with "
                            "`actsparse build --sign KEY`")
    try:
        key.verify(_read(path, SIGNATURE, 1024), data)
    except InvalidSignature:
        raise ArtifactError(f"{path}: the signature does not match the manifest (edited, or signed by another "
                            "key); refusing to load it") from None


def _key_bytes(key, what: str) -> bytes:
    if isinstance(key, (bytes, bytearray)):
        return bytes(key)
    try:
        return Path(key).read_bytes()
    except (OSError, TypeError) as err:
        why = getattr(err, "strerror", None) or err
        raise ArtifactError(f"cannot read the {what} {str(key)[:80]}: {why}") from None
