# lock.py -- the twin of lock.lua: multiprocessing.Lock, uncontended.
import multiprocessing as mp
import sys
import time


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000000
    lock = mp.Lock()
    for _ in range(n // 10):
        lock.acquire()
        lock.release()
    t0 = time.monotonic()
    for _ in range(n):
        lock.acquire()
        lock.release()
    dt = time.monotonic() - t0
    print("acquire_release %.1f ns" % (dt / n * 1e9))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
