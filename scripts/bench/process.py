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


def timed(name, ctx, warm, n):
    """Prints the mean ms of n start+joins, after warm ones."""
    for _ in range(warm):
        once(ctx)
    t0 = time.perf_counter()
    for _ in range(n):
        once(ctx)
    dt = time.perf_counter() - t0
    print("%s %.4f ms" % (name, dt * 1e3 / n))


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    n_spawn = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    # warm-ups as the Lua version's; the forkserver starts in its own
    timed("start_join", mp, 20, n)
    timed("spawn_start_join", mp.get_context("spawn"), 5, n_spawn)
    timed("forkserver_start_join", mp.get_context("forkserver"), 20, n)


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
