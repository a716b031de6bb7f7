# pool_cpu.py -- the twin of pool_cpu.lua: the same naive prime count done
# serially and by multiprocessing.Pool.map (fork start method).
import multiprocessing as mp
import sys
import time

BLOCK = 12000


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


def main():
    global BLOCK
    blocks_n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    BLOCK = int(sys.argv[2]) if len(sys.argv) > 2 else 12000
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    chunksize = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    blocks = list(range(1, blocks_n + 1))
    with mp.Pool(workers) as pool:
        pool.map(count_primes, [1, 2])

        t0 = time.monotonic()
        serial = [count_primes(k) for k in blocks]
        t_serial = time.monotonic() - t0

        t0 = time.monotonic()
        parallel = pool.map(count_primes, blocks, chunksize)
        t_parallel = time.monotonic() - t0
        pool.close()
        pool.join()

    assert sum(parallel) == sum(serial)
    print("serial %.3f s" % t_serial)
    print("parallel %.3f s" % t_parallel)
    print("parallel_over_serial %.3f x" % (t_parallel / t_serial))
    print("# speedup %.2fx, %d primes" % (t_serial / t_parallel,
                                          sum(serial)))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
