# pool_dict.py -- the twin of pool_dict.lua: multiprocessing.Pool, fork
# start method, tasks whose argument and result are a Manager().dict()
# proxy: each sets a key and returns the proxy.  It runs 2000 tasks by
# default, not 20000: at its rate 20000 take over a minute a round.  The
# figure is a rate, comparable either way.
import multiprocessing as mp
import sys
import time


def touch(d, i):
    d[i] = i
    return d


def run(pool, d, n):
    t0 = time.monotonic()
    rs = [pool.apply_async(touch, (d, i)) for i in range(1, n + 1)]
    for i, r in enumerate(rs, 1):
        assert r.get()[i] == i
    return time.monotonic() - t0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with mp.Manager() as manager, mp.Pool(workers) as pool:
        d = manager.dict()
        run(pool, d, n // 10)
        dt = run(pool, d, n)
        pool.close()
        pool.join()
    print("dict_apply %.3f k/s" % (n / dt / 1e3))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
