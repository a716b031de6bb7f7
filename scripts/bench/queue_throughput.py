# queue_throughput.py -- the twin of queue_throughput.lua: multiprocessing.Queue, fork start
# method, one producer process and this process consuming.
import multiprocessing as mp
import sys
import time


def produce(q, n, item):
    for _ in range(n):
        q.put(item)


def run(n, item, maxsize, warm):
    q = mp.Queue(maxsize)
    p = mp.Process(target=produce, args=(q, warm + n, item))
    p.start()
    for _ in range(warm):
        q.get()
    t0 = time.monotonic()
    for _ in range(n):
        q.get()
    dt = time.monotonic() - t0
    p.join()
    q.close()
    return dt


def echo(there, back):
    while True:
        v = there.get()
        if not v:
            return
        back.put(v)


def rtt(n, warm):
    there, back = mp.Queue(), mp.Queue()
    p = mp.Process(target=echo, args=(there, back))
    p.start()
    for i in range(1, warm + 1):
        there.put(i)
        back.get()
    t0 = time.monotonic()
    for i in range(1, n + 1):
        there.put(i)
        back.get()
    dt = time.monotonic() - t0
    there.put(False)
    p.join()
    return dt / n


def main():
    n_ints = int(sys.argv[1]) if len(sys.argv) > 1 else 200000
    n_recs = int(sys.argv[2]) if len(sys.argv) > 2 else 100000
    big_rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 32
    rec = {"id": 12345, "name": "alpha", "score": 3.5,
           "tags": ["a", "b", "c"], "ok": True}
    warm = 1000
    print("ints %.3f M/s" % (n_ints / run(n_ints, 12345, 0, warm) / 1e6))
    print("records %.3f M/s" % (n_recs / run(n_recs, rec, 0, warm) / 1e6))
    print("rtt %.3f us" % (rtt(n_ints // 10, warm) * 1e6))
    big = "x" * (64 << 20)
    dt = run(big_rounds, big, 2, 4)
    print("big %.3f GB/s" % (big_rounds * len(big) / dt / 1e9))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
