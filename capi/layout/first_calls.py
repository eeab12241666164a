# A gdb script: the functions of libmemimg.so that run inside one call of
# memimg_restore(), on any thread, in the order of their first call.
#
#   GTRACE_OUT=FILE GTRACE_LIB=libmemimg.so gdb -q -batch -x first_calls.py --args PROGRAM ARGS
#
# It stops at memimg_restore(), puts a one-shot breakpoint on every function
# of the library (a few thousand: a second or two), and records each hit
# until the call returns. Unlike callgrind it runs the real system calls, so
# a lazy restore's userfaultfd and its handler thread are traced too.
import os
import subprocess

import gdb

out = os.environ["GTRACE_OUT"]
lib = os.path.realpath(os.environ["GTRACE_LIB"])
gdb.execute("set pagination off")
gdb.execute("set confirm off")
# Threads are followed through their LWPs: libthread_db can lose a thread
# that starts while the others are stopped.
gdb.execute("set libthread-db-search-path /nonexistent")
gdb.execute("starti")

nm = subprocess.run(["nm", "--defined-only", lib], capture_output=True, text=True, check=True)
functions = {}
entry = None
for line in nm.stdout.splitlines():
    w = line.split()
    if len(w) == 3 and w[1] in "tT":
        functions.setdefault(int(w[0], 16), w[2])
        if w[2] == "memimg_restore":
            entry = int(w[0], 16)
if entry is None:
    raise gdb.GdbError(f"{lib} has no memimg_restore")


def load_base():
    pid = gdb.selected_inferior().pid
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            w = line.split()
            if len(w) >= 6 and int(w[2], 16) == 0 and os.path.realpath(w[5]) == lib:
                return int(w[0].split("-")[0], 16)
    return None


# Run to main (the library is loaded by then), then to memimg_restore's
# first instruction.
gdb.execute("break main")
gdb.execute("continue")
base = load_base()
if base is None:
    raise gdb.GdbError(f"{lib} is not mapped in the traced program")
gdb.execute("delete")
gdb.execute(f"break *{base + entry:#x}")
gdb.execute("continue")

# Stopped on its first instruction: memimg_restore runs first.
hits = ["memimg_restore"]


class FirstCall(gdb.Breakpoint):
    def stop(self):
        hits.append(self.symbol)
        self.enabled = False
        return False


class Returned(gdb.FinishBreakpoint):
    def stop(self):
        return True


gdb.execute("delete")
for offset, name in functions.items():
    if offset == entry:
        continue
    b = FirstCall(f"*{base + offset:#x}", internal=True)
    b.symbol = name
Returned(gdb.newest_frame(), internal=True)
gdb.execute("continue")
with open(out, "w") as f:
    f.writelines(h + "\n" for h in hits)
gdb.execute("kill")
