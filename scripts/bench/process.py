"""process.py -- Python twin of process.lua: start+join of a trivial child
with multiprocessing's fork start method, then with spawn, then with the
forkserver (started before the clock).
Prints: start_join <ms per start+join> ms, spawn_start_join <ms> ms,
forkserver_start_join <ms> ms
Usage: python3 process.py [N=500] [N_SPAWN=50]
"""
import multiprocessing as mp
import sys
import time


def noop():
    pass


def once(ctx=mp):
    p = ctx.Process(target=noop)
    p.start()
    p.join()
    p.close()


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    for _ in range(20):  # warm up, as the Lua version does
        once()
    t0 = time.perf_counter()
    for _ in range(n):
        once()
    dt = time.perf_counter() - t0
    print("start_join %.4f ms" % (dt * 1e3 / n))
    n_spawn = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    spawn = mp.get_context("spawn")
    for _ in range(5):
        once(spawn)
    t0 = time.perf_counter()
    for _ in range(n_spawn):
        once(spawn)
    dt = time.perf_counter() - t0
    print("spawn_start_join %.4f ms" % (dt * 1e3 / n_spawn))
    forkserver = mp.get_context("forkserver")
    for _ in range(20):  # the server starts here
        once(forkserver)
    t0 = time.perf_counter()
    for _ in range(n):
        once(forkserver)
    dt = time.perf_counter() - t0
    print("forkserver_start_join %.4f ms" % (dt * 1e3 / n))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
