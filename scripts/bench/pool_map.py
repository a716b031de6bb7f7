# pool_map.py -- the twin of pool_map.lua: multiprocessing.Pool.map, fork
# start method, a function returning its argument, the default chunksize;
# the first map, then the median of three more; then the median of three
# loops over imap of the list in chunks of 1000.
import multiprocessing as mp
import sys
import time


def identity(x):
    return x


def run(pool, items):
    t0 = time.monotonic()
    out = pool.map(identity, items)
    dt = time.monotonic() - t0
    assert len(out) == len(items) and out[-1] == items[-1]
    return dt


def run_imap(pool, items):
    t0 = time.monotonic()
    n, last = 0, None
    for r in pool.imap(identity, items, 1000):
        n, last = n + 1, r
    dt = time.monotonic() - t0
    assert n == len(items) and last == items[-1]
    return dt


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    items = list(range(1, n + 1))
    with mp.Pool(workers) as pool:
        run(pool, items[:n // 10])
        dt = run(pool, items)
        again = sorted(run(pool, items) for _ in range(3))
        lazy = sorted(run_imap(pool, items) for _ in range(3))
        pool.close()
        pool.join()
    print("map %.3f M/s" % (n / dt / 1e6))
    print("map_again %.3f M/s" % (n / again[1] / 1e6))
    print("imap %.3f M/s" % (n / lazy[1] / 1e6))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
