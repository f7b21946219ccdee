"""Data does not fall to the ground: a capture session (camera, gate, liveness, JPEG,
envelope) writes no file anywhere and logs no image bytes.

The session runs in a child process with its own HOME, TMPDIR and working directory, an audit
hook recording every write-mode open, mkdir and rename, and logging at DEBUG to stderr. The
private directories must hold exactly the files they held before; the shared writable places
(/tmp, /var/tmp, /dev/shm, the repository) must gain no image file (other engineers' tests may
create unrelated files there meanwhile).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import synth

from appliance.gm import sm2
from appliance.kiosk.capture import CaptureConfig, CaptureSession, open_envelope
from appliance.kiosk.capture.sources import Camera, EmulatedCamera

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

CHILD = r"""
import json, os, sys, logging
writes = []
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE):
            writes.append("open:%s" % (path,))
    elif event in ("os.mkdir", "os.rename", "os.replace", "os.link", "os.symlink",
                   "os.truncate", "shutil.copyfile", "shutil.move"):
        writes.append("%s:%s" % (event, args[0]))

sys.addaudithook(hook)
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
sys.path.insert(0, sys.argv[1])
import synth
from appliance.gm import sm2
from appliance.kiosk.capture import CaptureConfig, CaptureSession, open_envelope, check_digest
from appliance.kiosk.capture.sources import Camera, EmulatedCamera

sk, pk = sm2.generate_keypair()
case = synth.genuine_cases()[1]
session = CaptureSession(CaptureConfig(), randbelow=synth.seeded_randbelow(case.seed))
subject = case.make(session.challenge)
camera = Camera(EmulatedCamera(subject.frame_at_index, fps=case.fps), sleep=lambda s: None)
for frame, t in camera.frames():
    subject.on_events(session.feed(frame, t), t)
    frame.fill(0)
    if session.done:
        break
sealed = session.seal(pk, bytes(16))
jpeg = open_envelope(sk, sealed.encode())
check_digest(jpeg, sealed.capture_digest)
if sys.argv[2] == "leak":  # the control: what the scan and the hook must catch
    import cv2
    cv2.imwrite(os.path.join(os.environ["TMPDIR"], "leak.jpg"), synth.render())
    with open(os.path.join(os.environ["HOME"], "leak.bin"), "wb") as f:
        f.write(jpeg)
print(json.dumps({"result": session.result.reason, "jpeg": len(jpeg), "writes": writes}))
"""


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv", "__pycache__")]
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            out[p] = (st.st_ino, st.st_mtime_ns)
    return out


IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"II*\x00", b"MM\x00*", b"P6\n", b"P5\n",
               b"\x93NUMPY", b"RIFF")


def is_image(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return any(head.startswith(m) for m in IMAGE_MAGIC)


def assert_no_image_bytes(text: str, jpeg: bytes | None = None) -> None:
    assert "\ufffd\ufffd\ufffd" not in text and "\\xff\\xd8" not in text.lower()
    assert "ffd8ff" not in text.lower()
    assert not re.search(r"[0-9a-fA-F]{64,}", text), "a long hex run in the log"
    assert not re.search(r"[A-Za-z0-9+/]{80,}={0,2}", text), "a long base64 run in the log"
    if jpeg is not None:
        for chunk in (jpeg[100:124], jpeg[-40:-16]):
            assert chunk.hex() not in text and base64.b64encode(chunk).decode() not in text


def run_child(tmp_path: Path, mode: str):
    """Run a capture session in a child process; return what it printed and what changed."""
    home, tmp, cwd = tmp_path / "home", tmp_path / "tmp", tmp_path / "cwd"
    for d in (home, tmp, cwd):
        d.mkdir()
    private = {d: snapshot(d) for d in (home, tmp, cwd)}
    shared_roots = [Path(p) for p in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(p)]
    shared_roots.append(REPO)
    shared = {r: snapshot(r) for r in shared_roots}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "PYTHON"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), TMP=str(tmp), TEMP=str(tmp),
               PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(HERE), mode], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    changed = sorted({path for d, before in private.items()
                      for path, _ in set(snapshot(d).items()) ^ set(before.items())})
    new_images = sorted(p for root, before in shared.items()
                        for p in snapshot(root).keys() - before.keys() if is_image(p))
    return out, proc.stderr, changed, new_images


def test_capture_session_leaves_no_file_and_no_image_in_logs(tmp_path):
    out, stderr, changed, new_images = run_child(tmp_path, "clean")
    assert out["result"] == "passed" and out["jpeg"] > 10_000
    assert out["writes"] == [], out["writes"]
    assert changed == [], changed
    assert new_images == [], new_images
    assert "capture passed" in stderr  # the logs ran...
    assert_no_image_bytes(stderr)  # ...and carried no pixels


def test_the_scan_would_see_a_leak(tmp_path):
    """Control: a session that writes a JPEG (from OpenCV, unseen by the audit hook) and a
    file from Python is caught by the directory scan and the hook respectively."""
    out, _, changed, _ = run_child(tmp_path, "leak")
    assert any(p.endswith("leak.jpg") for p in changed)
    assert any(p.endswith("leak.bin") for p in changed)
    assert any("leak.bin" in w for w in out["writes"])


def test_logs_carry_no_image_bytes(caplog):
    synth.source()  # load the test picture first (PIL logs its PNG chunks at DEBUG)
    caplog.set_level(logging.DEBUG)
    sk, pk = sm2.generate_keypair()
    case = synth.genuine_cases()[2]
    session = CaptureSession(CaptureConfig(), randbelow=synth.seeded_randbelow(case.seed))
    subject = case.make(session.challenge)
    camera = Camera(EmulatedCamera(subject.frame_at_index, fps=case.fps,
                                   unplugged=[(3, 6)]), sleep=lambda s: None)
    for frame, t in camera.frames():
        subject.on_events(session.feed(frame, t), t)
        if session.done:
            break
    assert camera.reconnects == 1
    sealed = session.seal(pk, bytes(16))
    jpeg = open_envelope(sk, sealed.envelope)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "camera lost" in text and "capture passed" in text
    ours = [r for r in caplog.records if r.name.startswith("appliance")]
    assert ours
    for record in ours:
        for arg in record.args or ():
            assert not isinstance(arg, bytes | bytearray | memoryview | np.ndarray), record
    assert_no_image_bytes(text, jpeg)
