"""Files a run reads back after another process (or an earlier run) wrote them, checked like data: a
directory's `manifest.json`, written last, holds each file's size and sha256; `manifest_damage` names the
first file that no longer matches (truncated by a full disk, damaged by a bad copy, half-replaced).
Checkpoints, the initial adapter and the de-quantised GGUF cache carry one."""
import hashlib
import json
import os

from lora_one.storage import write_json

MANIFEST = "manifest.json"


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str, names: list[str] | None = None, **facts) -> None:
    """Size and sha256 of the files `names` of `directory` (default: all of them), and any `facts` worth
    checking on reading back (e.g. what the files were made from). Call it last."""
    names = sorted(name for name in os.listdir(directory) if name != MANIFEST) if names is None else names
    files = {name: {"bytes": os.path.getsize(os.path.join(directory, name)),
                    "sha256": sha256_of(os.path.join(directory, name))} for name in names}
    write_json(os.path.join(directory, MANIFEST), {"files": files, **facts}, indent=1)


def read_manifest(directory: str) -> dict | None:
    """The manifest of `directory`, None if it has none; a manifest that is not one raises ValueError."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
        if not isinstance(manifest.get("files"), dict):
            raise ValueError("no file list")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{MANIFEST} is not a valid manifest ({err})") from err
    return manifest


def manifest_damage(directory: str) -> str | None:
    """What is wrong with `directory`'s files against its manifest (the first bad file, named), or None
    if all are intact."""
    try:
        manifest = read_manifest(directory)
    except ValueError as err:
        return str(err)
    if manifest is None:
        return f"{MANIFEST} is missing"
    for name, expected in manifest["files"].items():
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            return f"{name} is missing"
        size = os.path.getsize(path)
        if size != expected.get("bytes"):
            return f"{name} is {size} bytes, {expected.get('bytes')} were written (truncated?)"
        if sha256_of(path) != expected.get("sha256"):
            return f"{name} does not match its sha256 (damaged)"
    return None
