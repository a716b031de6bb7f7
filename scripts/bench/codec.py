"""codec.py -- Python twin of codec.lua: pickle.dumps/loads round trips of
the same record, which is how multiprocessing moves every value through
its queues and pipes.
Prints: roundtrip <M round trips/s> M/s, roundtrip_ns, encode_ns, decode_ns.
Usage: python3 codec.py [N=1000000]
"""
import multiprocessing as mp
import pickle
import sys
import time


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000000
    rec = {"id": 12345, "name": "alpha", "score": 3.5,
           "tags": ["a", "b", "c"], "ok": True}
    dumps, loads, clock = pickle.dumps, pickle.loads, time.perf_counter
    assert loads(dumps(rec)) == rec

    for _ in range(n // 10):  # warm up
        loads(dumps(rec))

    t0 = clock()
    for _ in range(n):
        loads(dumps(rec))
    rt = (clock() - t0) / n

    s = dumps(rec)
    t0 = clock()
    for _ in range(n):
        dumps(rec)
    enc = (clock() - t0) / n

    t0 = clock()
    for _ in range(n):
        loads(s)
    dec = (clock() - t0) / n

    print("roundtrip %.3f M/s" % (1e-6 / rt))
    print("roundtrip_ns %.1f ns" % (rt * 1e9))
    print("encode_ns %.1f ns" % (enc * 1e9))
    print("decode_ns %.1f ns" % (dec * 1e9))


if __name__ == "__main__":
    mp.set_start_method("fork")
    main()
