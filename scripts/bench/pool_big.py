# pool_big.py -- the twin of pool_big.lua: multiprocessing.Pool, fork start
# method, apply_async of a function returning its argument, a 1 MiB str.
import multiprocessing as mp
import sys
import time

SIZE = 1 << 20


def identity(x):
    return x


def run(pool, payload, n):
    t0 = time.monotonic()
    rs = [pool.apply_async(identity, (payload[i % 8],)) for i in range(n)]
    for i, r in enumerate(rs):
        assert r.get() == payload[i % 8]
    return n / (time.monotonic() - t0)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    payload = [chr(65 + i) + "x" * (SIZE - 1) for i in range(8)]
    with mp.Pool(workers) as pool:
        run(pool, payload, n // 4)
        rates = sorted(run(pool, payload, n) for _ in range(rounds))
        pool.close()
        pool.join()
    rate = rates[(rounds - 1) // 2]
    print("apply_1mib %.1f /s" % rate)
    print("apply_1mib_bytes %.3f GB/s" % (rate * SIZE / 1e9))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
