# pool_apply.py -- the twin of pool_apply.lua: multiprocessing.Pool, fork
# start method, many apply_async of a function returning its argument.
import multiprocessing as mp
import sys
import time


def identity(x):
    return x


def pss(pid):
    """The proportional set size of process pid, in kB."""
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def run(pool, n):
    t0 = time.monotonic()
    rs = [pool.apply_async(identity, (i,)) for i in range(1, n + 1)]
    for i, r in enumerate(rs, 1):
        assert r.get() == i
    return time.monotonic() - t0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with mp.Pool(workers) as pool:
        run(pool, n // 10)
        dt = run(pool, n)
        time.sleep(0.2)
        procs = mp.active_children()
        kb = sum(pss(p.pid) for p in procs) / len(procs)
        pool.close()
        pool.join()
    print("apply_async %.3f k/s" % (n / dt / 1e3))
    print("idle_worker_pss %.0f kB" % kb)


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
