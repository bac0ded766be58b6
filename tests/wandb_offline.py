"""Read what an OFFLINE W&B run wrote (tests only): the records of its ``run-*.wandb`` file,
parsed with W&B's own protobuf ``Record`` (the file is a LevelDB-style log of them: a 7-byte
header, then 32 KiB blocks of ``crc32 (4) | length (2) | type (1) | data`` chunks; type 1 = a full
record, 2 / 3 / 4 = its first / middle / last piece)."""
from __future__ import annotations

import glob
import json
import os
import struct
from typing import Any, Dict, Iterator

BLOCK = 32768
HEADER = 7


def records(path: str) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, buf = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:                      # block trailer: padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            yield r


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_run(wandb_parent: str) -> Dict[str, Any]:
    """The single offline run below ``<wandb_parent>/wandb/``: ``run`` (the run record),
    ``config`` (key -> value), ``history`` (list of {key: value}, nested keys joined by '/'),
    ``summary`` (merged), ``artifacts`` (records), ``exit_code``, ``dir`` (its folder)."""
    found = glob.glob(os.path.join(wandb_parent, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(found) == 1, found
    out: Dict[str, Any] = {"config": {}, "history": [], "summary": {}, "artifacts": [],
                           "exit_code": None, "dir": os.path.dirname(found[0]), "run": None}
    for r in records(found[0]):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out["run"] = r.run
        elif kind == "config":
            for u in r.config.update:
                out["config"][_key(u)] = json.loads(u.value_json)
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            for u in r.summary.update:
                out["summary"][_key(u)] = json.loads(u.value_json)
        elif kind == "artifact":
            out["artifacts"].append(r.artifact)
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out
