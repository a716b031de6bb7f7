# pool_apply.py -- the twin of pool_apply.lua: multiprocessing.Pool, fork
# start method, many apply_async of a function returning its argument.
import multiprocessing as mp
import sys
import time


def identity(x):
    return x


def proc(pid, name, key):
    """A number from /proc/pid/name, after key."""
    with open("/proc/%d/%s" % (pid, name)) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def sleeps(procs):
    """The workers' voluntary context switches: their sleeps."""
    return sum(proc(p.pid, "status", "voluntary_ctxt_switches")
               for p in procs)


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
        procs = mp.active_children()
        slept = sleeps(procs)
        dt = run(pool, n)
        slept = sleeps(procs) - slept
        time.sleep(0.2)
        kb = sum(proc(p.pid, "smaps_rollup", "Pss") for p in procs) / len(procs)
        pool.close()
        pool.join()
    print("apply_async %.3f k/s" % (n / dt / 1e3))
    print("worker_sleeps %.1f /1k" % (slept / n * 1e3))
    print("idle_worker_pss %.0f kB" % kb)


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
