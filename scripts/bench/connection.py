# connection.py -- the twin of connection.lua: multiprocessing.connection's
# Listener and Client on a Unix socket with an authkey, an echo process.
# Prints: roundtrip <us per round trip> us
import multiprocessing as mp
import os
import sys
import tempfile
import time
from multiprocessing.connection import Client, Listener


def echo(path):
    c = Client(path, family="AF_UNIX", authkey=b"bench")
    while True:
        v = c.recv()
        if v is None:
            break
        c.send(v)
    c.close()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    path = os.path.join(tempfile.mkdtemp(), "sock")
    l = Listener(path, family="AF_UNIX", authkey=b"bench")
    p = mp.Process(target=echo, args=(path,))
    p.start()
    c = l.accept()
    for i in range(n // 10):
        c.send(i)
        c.recv()
    t0 = time.monotonic()
    for i in range(n):
        c.send(i)
        c.recv()
    dt = time.monotonic() - t0
    c.send(None)
    p.join()
    c.close()
    l.close()
    print("roundtrip %.3f us" % (dt / n * 1e6))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
