# value.py -- the twin of value.lua: two processes add 1 to a shared
# multiprocessing.Value 100k times each under its lock.  Python has no
# atomic add, so its "atomic_add" line is the same locked increment: the
# best Python can do.  Timed as value.lua times it: from a Barrier both
# processes pass to the last one's end of its loop.
import multiprocessing as mp
import sys
import time


def work(v, n, start, times, i):
    start.wait()
    times[2 * i] = time.monotonic()
    for _ in range(n):
        with v.get_lock():
            v.value += 1
    times[2 * i + 1] = time.monotonic()


def race(n):
    v = mp.Value("q", 0)
    times = mp.Array("d", 4)
    start = mp.Barrier(2)
    procs = [mp.Process(target=work, args=(v, n, start, times, i))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    dt = max(times[1], times[3]) - min(times[0], times[2])
    assert v.value == 2 * n
    return 2 * n / dt / 1e6


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    print("locked_incr %.3f M/s" % race(n))
    print("atomic_add %.3f M/s" % race(n))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
