# manager_dict.py -- the twin of manager_dict.lua: a Manager().dict(), fork
# start method.  One child process sets N keys, then this process reads
# them all back (2N operations, each side timed over its own loop); and
# two processes each add 1 to one key N times at once, under a
# Manager().Lock() (Python's proxies have no atomic increment: `d[k] += 1`
# is a read and a write, so the lock is what makes it correct).
# Prints: set_get <k ops/s> k/s, incr <k ops/s> k/s
# Usage: python3 manager_dict.py [N=20000]
import multiprocessing as mp
import sys
import time


def setter(d, n, set_time):
    t0 = time.monotonic()
    for i in range(1, n + 1):
        d["key%d" % i] = i
    set_time.value = time.monotonic() - t0


def set_get(m, n):
    d = m.dict()
    set_time = mp.Value("d", 0.0)
    p = mp.Process(target=setter, args=(d, n, set_time))
    p.start()
    p.join()
    assert p.exitcode == 0, "the setter failed"
    t0 = time.monotonic()
    total = 0
    for i in range(1, n + 1):
        total += d["key%d" % i]
    get_time = time.monotonic() - t0
    assert total == n * (n + 1) // 2, "wrong values read back"
    return 2 * n / (set_time.value + get_time)


def incrementer(d, lock, go, done, i, n):
    go.wait()
    for _ in range(n):
        with lock:
            d["n"] += 1
    done[i] = time.monotonic()


def incr(m, n):
    d = m.dict()
    d["n"] = 0
    lock = m.Lock()
    go = m.Barrier(3)
    done = mp.Array("d", 2)
    procs = [mp.Process(target=incrementer, args=(d, lock, go, done, i, n))
             for i in range(2)]
    for p in procs:
        p.start()
    go.wait()
    t0 = time.monotonic()
    for p in procs:
        p.join()
    dt = max(done[0], done[1]) - t0
    assert d["n"] == 2 * n, "lost increments: %d" % d["n"]
    return 2 * n / dt


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with mp.Manager() as m:
        set_get(m, n // 10)  # warm up
        print("set_get %.3f k/s" % (set_get(m, n) / 1e3))
        print("incr %.3f k/s" % (incr(m, n) / 1e3))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
