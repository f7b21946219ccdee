"""Loaded at interpreter start by the daemon under test (and its children) when this
directory is on PYTHONPATH: records every path the process opens for writing, creates,
renames or links, and every SQLite database it connects to, and writes the list to
``$APPLIANCE_TEST_WRITES.<pid>`` at exit. The browser tests' no-trace check reads it."""

import atexit
import os
import sys

_OUT = os.environ.get("APPLIANCE_TEST_WRITES")
if _OUT:
    _seen = set()
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):  # an open file descriptor (a pipe): no new file
                return
            if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & _WRITE):
                _seen.add(str(path))
        elif event in ("os.rename", "os.replace", "os.link", "os.symlink",
                       "shutil.copyfile", "shutil.move"):
            _seen.add(str(args[1]) if len(args) > 1 else str(args[0]))
        elif event in ("os.mkdir", "os.truncate"):
            _seen.add(str(args[0]))
        elif event == "sqlite3.connect":
            db = str(args[0])
            if "mode=ro" in db:  # read-only
                return
            if db.startswith("file:"):
                db = db[5:].split("?", 1)[0]
            _seen.add(db)

    sys.addaudithook(_hook)

    def _dump():
        items = sorted(_seen)
        with open("%s.%d" % (_OUT, os.getpid()), "w") as f:
            f.write("\n".join(items))

    atexit.register(_dump)
