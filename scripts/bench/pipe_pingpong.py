# pipe_pingpong.py -- the twin of pipe_pingpong.lua: multiprocessing.Pipe ping-pong.
import multiprocessing as mp
import sys
import time


def echo(a, b):
    a.close()
    while True:
        v = b.recv()
        if v is None:
            break
        b.send(v)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    a, b = mp.Pipe()
    p = mp.Process(target=echo, args=(a, b))
    p.start()
    b.close()
    for i in range(n // 10):
        a.send(i)
        a.recv()
    t0 = time.monotonic()
    for i in range(n):
        a.send(i)
        a.recv()
    dt = time.monotonic() - t0
    a.send(None)
    p.join()
    print("pingpong_rtt %.3f us" % (dt / n * 1e6))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
