"""An independent checker of docs/capture-format.md for the Python tests.

It parses safetensors with struct/json only (not with viral_lens_torch's reader) so the writer is checked against
the spec rather than against itself.
"""

import json
import os
import re
import struct

ST_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
TMP_RE = re.compile(r"\.tmp-\d+(-[0-9a-f]+)?$")


def st_header_json(raw):
    """The JSON header of safetensors bytes: only the 8 + N header bytes are decoded (the tensor data that
    follows is binary and usually not valid UTF-8)."""
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n].decode("utf-8"))


def read_st_header(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0, "%s: header length %d is not a multiple of 8" % (path, n)
    text = raw[8:8 + n].decode("utf-8")
    body = text.rstrip(" ")
    assert body.endswith("}") and len(text) - len(body) < 8, "header must be JSON padded with < 8 spaces"
    header = json.loads(body)
    data_len = len(raw) - 8 - n
    return header, data_len


def validate_capture(capture_dir, strays_ok=False):
    """Assert every rule of docs/capture-format.md (and the key sets of the TS schema); return the manifest.
    ``strays_ok``: accept unlisted files (a crashed capture before resume)."""
    with open(os.path.join(capture_dir, "manifest.json"), encoding="utf-8") as f:
        m = json.load(f)
    # key sets as strict as the TS zod schema (src/store/manifest.ts): unknown keys are errors there
    assert set(m) <= {"format", "version", "model", "variant", "checkpoint", "token_layout", "layers", "targets",
                      "samples", "labels", "provenance"}, sorted(m)
    assert isinstance(m["model"].get("name"), str) and m["model"]["name"], m["model"]
    assert set(m["token_layout"]) <= {"kind", "tokens", "source_tokens", "grid", "pooling"}, m["token_layout"]
    assert m["layers"], "at least one layer"
    for e in m["layers"]:
        assert set(e) == {"name", "index", "dim", "shards"}, sorted(e)
    for e in m["targets"]:
        assert {"name", "dim", "tokens", "shards"} <= set(e) <= {"name", "description", "dim", "tokens", "shards",
                                                                "compute"}
        if "compute" in e:  # optional: how the target was computed (docs/capture-format.md)
            assert set(e["compute"]) <= {"source", "dtype", "autocast"}, e["compute"]
            assert e["compute"].get("autocast") is None or isinstance(e["compute"]["autocast"], str)
    for e in m["layers"] + m["targets"]:
        for s in e["shards"]:
            assert set(s) == {"file", "tensor", "start", "count"}, sorted(s)
    assert set(m["samples"]) == {"count", "ids"}
    if m.get("checkpoint") is not None:
        assert set(m["checkpoint"]) <= {"step", "path"}, m["checkpoint"]
    if "num_layers" in m["model"]:
        assert all(e["index"] <= m["model"]["num_layers"] for e in m["layers"])
    assert m["format"] == "viral-lens.capture" and m["version"] == 1
    assert m["variant"] in ("baseline", "residual", "viral", "other")
    if "checkpoint" in m:
        if "step" in m["checkpoint"]:
            assert isinstance(m["checkpoint"]["step"], int) and m["checkpoint"]["step"] >= 0
    tl = m["token_layout"]
    assert tl["kind"] == "image"
    assert tl["pooling"] in ("none", "mean")
    assert tl["tokens"] == (1 if tl["pooling"] == "mean" else tl["source_tokens"])
    if tl["grid"] is not None:
        assert tl["grid"][0] * tl["grid"][1] == tl["source_tokens"]
    count = m["samples"]["count"]
    ids = m["samples"]["ids"]
    assert len(ids) == count and len(set(ids)) == count and all(isinstance(i, str) for i in ids)
    for name, values in m.get("labels", {}).items():
        assert len(values) == count, name
        assert all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in values), name
    names = [e["name"] for e in m["layers"]]
    assert len(set(names)) == len(names)
    indices = [e["index"] for e in m["layers"]]
    assert indices == sorted(indices), "layers must be in model order"
    for e in m["layers"]:
        want = "embed" if e["index"] == 0 else "blocks.%d.out" % (e["index"] - 1)
        assert e["name"] == want, (e["name"], want)
    referenced = set()
    for kind, entries in (("layer", m["layers"]), ("target", m["targets"])):
        for e in entries:
            tokens = tl["tokens"] if kind == "layer" else e["tokens"]
            pos = 0
            for s in e["shards"]:
                rel = s["file"]
                assert not rel.startswith("/") and ".." not in rel.split("/"), rel
                assert s["start"] == pos, "%s %s: gap/overlap at %d" % (kind, e["name"], pos)
                header, data_len = read_st_header(os.path.join(capture_dir, rel))
                info = header[s["tensor"]]
                assert info["dtype"] in ST_SIZES, info
                assert info["shape"] == [s["count"], tokens, e["dim"]], (rel, info["shape"])
                b, end = info["data_offsets"]
                assert end - b == s["count"] * tokens * e["dim"] * ST_SIZES[info["dtype"]]
                assert end <= data_len
                pos += s["count"]
                referenced.add(os.path.normpath(rel))
            assert pos == count, "%s %s covers %d of %d samples" % (kind, e["name"], pos, count)
    # no stray files in the writer-owned folders, no leftover temp files
    if strays_ok:
        return m
    for sub in ("layers", "targets"):
        for dirpath, _, files in os.walk(os.path.join(capture_dir, sub)):
            for fn in files:
                rel = os.path.normpath(os.path.relpath(os.path.join(dirpath, fn), capture_dir))
                assert rel in referenced, "stray file %s" % rel
    assert not any(TMP_RE.search(f) for f in os.listdir(capture_dir)), os.listdir(capture_dir)
    return m


def capture_files(capture_dir):
    """Every file under the capture directory, relative, normalised."""
    out = set()
    for dirpath, _, files in os.walk(capture_dir):
        for fn in files:
            out.add(os.path.normpath(os.path.relpath(os.path.join(dirpath, fn), capture_dir)))
    return out


def referenced_files(manifest):
    out = {"manifest.json"}
    for e in manifest["layers"] + manifest["targets"]:
        for s in e["shards"]:
            out.add(os.path.normpath(s["file"]))
    return out

