# pool_cpu.py -- the twin of pool_cpu.lua: the same naive prime count done
# serially, by multiprocessing.Pool.map and by plain processes that take
# the blocks in order from a shared counter (fork start method), in the
# same rotating rounds.
import multiprocessing as mp
import statistics
import sys
import time

BLOCK = 12000
BLOCKS = 64


def count_primes(k):
    count = 0
    for n in range(max(2, (k - 1) * BLOCK), k * BLOCK):
        prime, d = True, 2
        while d * d <= n:
            if n % d == 0:
                prime = False
                break
            d += 1
        if prime:
            count += 1
    return count


def take(counter):
    with counter.get_lock():
        counter.value += 1
        return counter.value


def counter_worker(go, counter, q):
    go.wait()
    s, k = 0, take(counter)
    while k <= BLOCKS:
        s += count_primes(k)
        k = take(counter)
    q.put(s)


def main():
    global BLOCK, BLOCKS
    BLOCKS = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    BLOCK = int(sys.argv[2]) if len(sys.argv) > 2 else 12000
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    chunksize = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    blocks = list(range(1, BLOCKS + 1))
    expected = sum(count_primes(k) for k in blocks)

    with mp.Pool(workers) as pool:
        pool.map(count_primes, [1, 2])

        def serial():
            assert sum(count_primes(k) for k in blocks) == expected

        def parallel():
            assert sum(pool.map(count_primes, blocks, chunksize)) == expected

        def processes():
            go, q = mp.Event(), mp.Queue()
            counter = mp.Value("i", 0)
            ps = [mp.Process(target=counter_worker, args=(go, counter, q))
                  for _ in range(workers)]
            for p in ps:
                p.start()
            t0 = time.monotonic()
            go.set()
            s = sum(q.get() for _ in ps)
            dt = time.monotonic() - t0
            for p in ps:
                p.join()
            assert s == expected
            return dt

        def timed(f):
            t0 = time.monotonic()
            dt = f()
            return dt if dt is not None else time.monotonic() - t0

        steps = [serial, parallel, processes]
        t = {f: [] for f in steps}
        p_s, q_s, p_q = [], [], []
        for r in range(rounds):
            dt = {}
            for i in range(len(steps)):
                f = steps[(r + i) % len(steps)]
                dt[f] = timed(f)
                t[f].append(dt[f])
            p_s.append(dt[parallel] / dt[serial])
            q_s.append(dt[processes] / dt[serial])
            p_q.append(dt[parallel] / dt[processes])
        pool.close()
        pool.join()

    med = statistics.median
    print("serial %.3f s" % med(t[serial]))
    print("parallel %.3f s" % med(t[parallel]))
    print("parallel_over_serial %.3f x" % med(p_s))
    print("processes_over_serial %.3f x" % med(q_s))
    print("parallel_over_processes %.3f x" % med(p_q))
    print("# speedup %.2fx (plain processes %.2fx), %d primes"
          % (1 / med(p_s), 1 / med(q_s), expected))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
