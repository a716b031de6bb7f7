# value.py -- the twin of value.lua: two processes add 1 to a shared
# multiprocessing.Value 100k times each under its lock.  Python has no
# atomic add, so its "atomic_add" line is the same locked increment: the
# best Python can do.
import multiprocessing as mp
import sys
import time


def work(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1


def race(n):
    v = mp.Value("q", 0)
    procs = [mp.Process(target=work, args=(v, n)) for _ in range(2)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    dt = time.monotonic() - t0
    assert v.value == 2 * n
    return 2 * n / dt / 1e6


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    print("locked_incr %.3f M/s" % race(n))
    print("atomic_add %.3f M/s" % race(n))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
