"""A stub VMM driver for testing the simulated oned (tests/test_simoned.py).

Standard library only, so the harness can be tested before the real driver exists.
It speaks the driver side of the protocol; the action name selects a behaviour and the
decoded payload is its parameter:

  SLEEP  secs     answer ``SLEEP SUCCESS id secs`` after sleeping (in a thread)
  MULTI           answer with a three-line info in one write
  SPLIT  secs     answer ``first``, then ``second`` as a continuation line secs later
  FAIL   text     answer ``FAIL FAILURE id text``
  ECHO   text     answer ``ECHO SUCCESS id text``
  RAW    bytes    write the payload bytes verbatim to stdout
  EXIT   code     exit at once with that code
  SPAWN           start ``sleep 300`` (same process group), answer its pid
  SPAWN_ESCAPE    same, but in a new session and holding our stdout open
  other           ``LOG I id <ACTION> received`` then ``<ACTION> SUCCESS id <payload length>``

Environment: STUB_INIT = ok | fail | none | garbage | delay:SECS;
STUB_FINALIZE = exit | ignore; STUB_FINALIZE_CODE = exit code after FINALIZE (0);
STUB_EOF = exit (code 255) | ignore.
"""

import os

# Checked before anything else can open a file and be given the lowest free fd.
try:
    os.fstat(2)
    FD2 = "open"
except OSError:
    FD2 = "closed"

import base64  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

_out_lock = threading.Lock()


def emit(data):
    """Write a whole line (or raw bytes) to fd 1 in one piece, like a flushing driver."""
    if isinstance(data, str):
        data = (data + "\n").encode("utf-8")
    with _out_lock:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]


def forever():
    while True:
        time.sleep(3600)


def spawn(escape):
    kwargs = {"stdin": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if escape:
        kwargs["start_new_session"] = True  # keeps our stdout: the reader sees no EOF
    else:
        kwargs["stdout"] = subprocess.DEVNULL
    return subprocess.Popen(["sleep", "300"], **kwargs).pid


def handle_action(action, vm_id, payload):
    text = payload.decode("utf-8", "replace")
    if action == "SLEEP":
        def later():
            time.sleep(float(text))
            emit(f"SLEEP SUCCESS {vm_id} {text}")
        threading.Thread(target=later, daemon=True).start()
    elif action == "MULTI":
        emit(f"MULTI SUCCESS {vm_id} first\nsecond\nthird")
    elif action == "SPLIT":
        def split():
            emit(f"SPLIT SUCCESS {vm_id} first")
            time.sleep(float(text))
            emit("second")
        threading.Thread(target=split, daemon=True).start()
    elif action == "FAIL":
        emit(f"FAIL FAILURE {vm_id} {text}")
    elif action == "ECHO":
        emit(f"ECHO SUCCESS {vm_id} {text}")
    elif action == "RAW":
        emit(payload)
    elif action == "EXIT":
        os._exit(int(text))
    elif action in ("SPAWN", "SPAWN_ESCAPE"):
        pid = spawn(action == "SPAWN_ESCAPE")
        emit(f"{action} SUCCESS {vm_id} {pid}")
    else:
        emit(f"LOG I {vm_id} {action} received")
        emit(f"{action} SUCCESS {vm_id} {len(payload)}")


def init():
    mode = os.environ.get("STUB_INIT", "ok")
    if mode == "none":
        return
    if mode.startswith("delay:"):
        time.sleep(float(mode.split(":", 1)[1]))
    if mode == "fail":
        emit("INIT FAILURE - stub refuses")
        return
    if mode == "garbage":
        emit("hello from a chatty driver")
    emit("INIT SUCCESS - -")
    emit(f"LOG I -1 ARGV {json.dumps(sys.argv[1:])}")
    emit(f"LOG I -1 FD2 {FD2}")


def main():
    if FD2 == "open":
        os.write(2, b"stub stderr: hello\n")
    stdin = sys.stdin.buffer
    while True:
        raw = stdin.readline()
        if not raw:
            if os.environ.get("STUB_EOF", "exit") == "ignore":
                forever()
            os._exit(255)
        line = raw.decode("utf-8", "replace").rstrip("\n")
        parts = line.split(" ")
        if parts[0] == "INIT":
            init()
        elif parts[0] == "FINALIZE":
            if os.environ.get("STUB_FINALIZE", "exit") != "ignore":
                os._exit(int(os.environ.get("STUB_FINALIZE_CODE", "0")))
        elif parts[0] == "DRIVER_CANCEL" and len(parts) == 2:
            emit(f"LOG I {parts[1]} Driver command for {parts[1]} cancelled")
        elif len(parts) == 4 and parts[1] == "":
            handle_action(parts[0], parts[2], base64.b64decode(parts[3]))


if __name__ == "__main__":
    main()
