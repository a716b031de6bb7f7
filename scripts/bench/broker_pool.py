# broker_pool.py -- the twin of broker_pool.lua: task queues on Redis.
# Celery (Redis broker and result backend, a prefork worker of 2 processes)
# and RQ (2 `rq worker` processes), each on a trivial task returning its
# argument, and the ceiling of the Redis server itself (redis-benchmark).
#
# Prints, one line each:
#   apply_async <k/s>  Celery: 20000 delay(i), then every result fetched
#   map <k/s>          Celery: task.chunks(zip(items), 1000) over 200000
#                      items, every result fetched
#   apply_p50 <ms>     Celery: one delay(i).get() on an idle worker,
#   apply_p99 <ms>     200 samples, nearest-rank median and 99th percentile
#   rq_apply_async, rq_map, rq_apply_p50, rq_apply_p99: the same for RQ with
#                      300 jobs, 20000 items in jobs of 1000, 100 samples
#                      (RQ's worker forks a process per job)
#   xadd_ceiling <k/s>      redis-benchmark -c 50 -n 200000 -P 1
#   xadd_ceiling_p16 <k/s>  the same with -P 16
# The counts keep a whole run under about 90 s on 2 cores (some 60 s:
# Celery does about 0.5-0.8k tasks/s there, RQ 0.15k jobs/s, at times far
# less); the first argument scales them (default 1).  A warm-up of a tenth
# precedes each timing.  The server's ceiling is measured first, then each
# system alone, its workers started just before it and stopped right after,
# so that no start-up or idle worker of one runs beside another's timing.
#
# Everything runs on a private redis-server (127.0.0.1, a random port in
# 20000-60000, a random password, nothing saved), started and stopped here
# with the workers.  When celery or rq cannot be imported, their metrics
# are skipped with a "# ... not installed" line.  When the interpreter
# running this script lacks them but the system's python3 has them (python3
# from a version manager does not see the distribution's packages), the
# script runs itself again with that interpreter.
import gc
import math
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TIMEOUT = 60  # seconds, for every result fetched

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
CELERY_N = max(10, int(20000 * SCALE))
CELERY_MAP_N = max(1000, int(200000 * SCALE))
CELERY_CHUNK = 1000
CELERY_SAMPLES = 200
RQ_N = max(10, int(300 * SCALE))
RQ_MAP_N = max(1000, int(20000 * SCALE))
RQ_CHUNK = 1000
RQ_SAMPLES = 100
XADD_N = 200000

TASKS = '''\
import os
from celery import Celery

app = Celery("benchtasks", broker=os.environ["BENCH_REDIS_URL"],
             backend=os.environ["BENCH_REDIS_URL"])


@app.task
def identity(x):
    return x
'''

RQ_TASKS = '''\
def rq_identity(x):
    return x


def rq_map(xs):
    return [rq_identity(x) for x in xs]
'''


def importable(*names):
    out = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            out.append(name)
    return out


def maybe_reexec():
    if not importable("celery", "rq") or os.environ.get("BENCH_REEXEC"):
        return
    for exe in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.access(exe, os.X_OK):
            continue
        if os.path.realpath(exe) == os.path.realpath(sys.executable):
            continue
        ok = subprocess.run([exe, "-c", "import celery, rq"],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode == 0
        if ok:
            os.environ["BENCH_REEXEC"] = "1"
            sys.stdout.flush()
            os.execv(exe, [exe, os.path.abspath(__file__)] + sys.argv[1:])


# The signals that stop a run.  A signal raises KeyboardInterrupt, but one
# that lands in a finaliser (celery's AsyncResult.__del__) is swallowed
# there, so the loops also look at this list.
STOP = []


def on_signal(signum, frame):
    STOP.append(signum)
    raise KeyboardInterrupt


def check():
    if STOP:
        raise KeyboardInterrupt


def say(msg):
    print("# " + msg, flush=True)


def metric(name, value, unit):
    check()
    print("%s %.3f %s" % (name, value, unit), flush=True)


def percentile(samples, q):
    s = sorted(samples)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def log_tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


class Procs:
    """The processes started here, each the leader of its own group."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []  # (name, Popen, log path)

    def start(self, name, argv, env=None):
        log = os.path.join(self.tmp, name + ".log")
        with open(log, "wb") as f:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                                 stderr=subprocess.STDOUT, cwd=self.tmp,
                                 env=env, start_new_session=True)
        self.procs.append((name, p, log))
        return p, log

    def stop(self, p, grace=10.0):
        """SIGTERM to the process group, SIGKILL if it outlives grace."""
        self.procs = [x for x in self.procs if x[1] is not p]
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # The group may hold children (prefork) after the leader is gone.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self, last=()):
        # Workers first, while the server they talk to is still there.
        order = [x for x in self.procs if x[0] not in last]
        order += [x for x in self.procs if x[0] in last]
        for _, p, _ in order:
            self.stop(p)


def start_redis(procs, password):
    for _ in range(20):
        port = random.randint(20000, 60000)
        p, log = procs.start("redis", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--requirepass", password,
            "--dir", procs.tmp, "--loglevel", "warning"])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if p.poll() is not None:
                break
            r = subprocess.run(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(port),
                 "--no-auth-warning", "-a", password, "ping"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                timeout=5)
            if r.stdout.strip() == b"PONG":
                return p, port
            time.sleep(0.05)
        text = log_tail(log)
        procs.stop(p)
        if "Address already in use" not in text:
            raise RuntimeError("redis-server did not start:\n" + text)
    raise RuntimeError("no free port for redis-server after 20 tries")


def xadd_ceiling(port, password, pipeline):
    r = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port),
         "-a", password, "-c", "50", "-n", str(XADD_N), "-P", str(pipeline),
         "--csv", "XADD", "bench", "*", "f", "v"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
        text=True)
    for line in r.stdout.splitlines():
        cells = [c.strip('"') for c in line.split('","')]
        if len(cells) >= 2 and cells[0].startswith("XADD"):
            return float(cells[1])
    raise RuntimeError("redis-benchmark printed no rate:\n" + r.stdout +
                       r.stderr)


def worker_env(tmp, url):
    env = dict(os.environ)
    env["PYTHONPATH"] = tmp + (os.pathsep + env["PYTHONPATH"]
                               if env.get("PYTHONPATH") else "")
    env["BENCH_REDIS_URL"] = url
    return env


# -- Celery ------------------------------------------------------------------

def celery_bench(tasks, worker, log):
    identity = tasks.identity

    def alive():
        if worker.poll() is not None:
            raise RuntimeError("celery worker exited:\n" + log_tail(log))

    # The worker takes a few seconds to come up: the first task waits.
    deadline = time.monotonic() + TIMEOUT
    r = identity.delay(0)
    while True:
        alive()
        check()
        try:
            assert r.get(timeout=1) == 0
            break
        except Exception as e:  # celery's TimeoutError
            if type(e).__name__ != "TimeoutError":
                raise
            if time.monotonic() > deadline:
                raise RuntimeError("celery worker did not answer:\n" +
                                   log_tail(log))

    def apply_async(n):
        t0 = time.monotonic()
        rs = []
        for i in range(1, n + 1):
            check()
            rs.append(identity.delay(i))
        for i, r in enumerate(rs, 1):
            check()
            assert r.get(timeout=TIMEOUT) == i
        return time.monotonic() - t0

    def map_(n):
        t0 = time.monotonic()
        g = identity.chunks(zip(range(1, n + 1)), CELERY_CHUNK).apply_async()
        out = g.get(timeout=TIMEOUT)
        dt = time.monotonic() - t0
        flat = [x for chunk in out for x in chunk]
        assert len(flat) == n and flat[-1] == n
        return dt

    def one(i):
        check()
        t0 = time.monotonic()
        assert identity.delay(i).get(timeout=TIMEOUT) == i
        return time.monotonic() - t0

    apply_async(CELERY_N // 10)
    alive()
    metric("apply_async", CELERY_N / apply_async(CELERY_N) / 1e3, "k/s")
    map_(CELERY_MAP_N // 10)
    alive()
    metric("map", CELERY_MAP_N / map_(CELERY_MAP_N) / 1e3, "k/s")
    for i in range(CELERY_SAMPLES // 10):
        one(i)
    time.sleep(0.2)
    samples = [one(i) for i in range(CELERY_SAMPLES)]
    metric("apply_p50", percentile(samples, 0.50) * 1e3, "ms")
    metric("apply_p99", percentile(samples, 0.99) * 1e3, "ms")


# -- RQ ----------------------------------------------------------------------

def rq_wait(job, deadline):
    """Polls a job until it has finished; returns its result."""
    delay = 0.0005
    while True:
        check()
        status = job.get_status(refresh=True)
        if status == "finished":
            return job.return_value(refresh=True)
        if status in ("failed", "stopped", "canceled"):
            raise RuntimeError("rq job %s %s" % (job.id, status))
        if time.monotonic() > deadline:
            raise RuntimeError("rq job %s: no result in %d s" %
                               (job.id, TIMEOUT))
        time.sleep(delay)
        delay = min(delay * 2, 0.005)


def rq_bench(tasks, url, workers):
    import redis
    import rq

    conn = redis.Redis.from_url(url)
    q = rq.Queue("bench", connection=conn)

    def alive():
        for p, log in workers:
            if p.poll() is not None:
                raise RuntimeError("rq worker exited:\n" + log_tail(log))

    def fetch(jobs):
        # Every wait starts its own clock: TIMEOUT bounds each result.
        return [rq_wait(j, time.monotonic() + TIMEOUT) for j in jobs]

    def apply_async(n):
        t0 = time.monotonic()
        jobs = []
        for i in range(1, n + 1):
            check()
            jobs.append(q.enqueue(tasks.rq_identity, i))
        out = fetch(jobs)
        dt = time.monotonic() - t0
        assert out == list(range(1, n + 1))
        return dt

    def map_(n):
        # RQ has no map: the items go out in chunks, one job each.
        items = list(range(1, n + 1))
        t0 = time.monotonic()
        jobs = q.enqueue_many([
            rq.Queue.prepare_data(tasks.rq_map, (items[i:i + RQ_CHUNK],))
            for i in range(0, n, RQ_CHUNK)])
        out = [x for chunk in fetch(jobs) for x in chunk]
        dt = time.monotonic() - t0
        assert out == items
        return dt

    def one(i):
        t0 = time.monotonic()
        j = q.enqueue(tasks.rq_identity, i)
        assert rq_wait(j, time.monotonic() + TIMEOUT) == i
        return time.monotonic() - t0

    # The workers come up while the first jobs wait in the queue.
    apply_async(max(10, RQ_N // 10))
    alive()
    metric("rq_apply_async", RQ_N / apply_async(RQ_N) / 1e3, "k/s")
    map_(RQ_MAP_N // 10)
    alive()
    metric("rq_map", RQ_MAP_N / map_(RQ_MAP_N) / 1e3, "k/s")
    for i in range(RQ_SAMPLES // 10):
        one(i)
    time.sleep(0.2)
    samples = [one(i) for i in range(RQ_SAMPLES)]
    metric("rq_apply_p50", percentile(samples, 0.50) * 1e3, "ms")
    metric("rq_apply_p99", percentile(samples, 0.99) * 1e3, "ms")


# -- main --------------------------------------------------------------------

def run(tmp, procs):
    measured = 0
    password = secrets.token_hex(16)
    redis_proc, port = start_redis(procs, password)
    url = "redis://:%s@127.0.0.1:%d/0" % (password, port)
    env = worker_env(tmp, url)
    for name, text in (("benchtasks", TASKS), ("rqtasks", RQ_TASKS)):
        with open(os.path.join(tmp, name + ".py"), "w") as f:
            f.write(text)

    missing = importable("celery", "rq")
    for name in missing:
        say("%s not installed" % name)

    for name, pipeline in (("xadd_ceiling", 1), ("xadd_ceiling_p16", 16)):
        try:
            metric(name, xadd_ceiling(port, password, pipeline) / 1e3, "k/s")
            measured += 1
        except Exception as e:
            say("%s failed: %s" % (name, e))
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port),
                    "--no-auth-warning", "-a", password, "del", "bench"],
                   stdout=subprocess.DEVNULL, timeout=10)

    os.environ["BENCH_REDIS_URL"] = url
    sys.path.insert(0, tmp)

    if "celery" not in missing:
        import benchtasks
        worker = procs.start("celery", [
            sys.executable, "-m", "celery", "-A", "benchtasks", "worker",
            "-c", "2", "--pool", "prefork", "-l", "warning"], env)
        try:
            celery_bench(benchtasks, *worker)
            measured += 1
        except Exception as e:
            say("celery failed: %s: %s" % (type(e).__name__, e))
        # Results left in reference cycles go now, while the server that
        # their finalisers talk to is still up.
        gc.collect()
        procs.stop(worker[0])
    if "rq" not in missing:
        workers = [procs.start("rq%d" % k, [
            sys.executable, "-m", "rq.cli", "worker", "--url", url,
            "--logging_level", "WARNING", "bench"], env) for k in (1, 2)]
        try:
            import rqtasks
            rq_bench(rqtasks, url, workers)
            measured += 1
        except Exception as e:
            say("rq failed: %s: %s" % (type(e).__name__, e))
        for p, _ in workers:
            procs.stop(p)
    return measured


def main():
    maybe_reexec()
    # SIGTERM unwinds like Ctrl-C, through the cleanup below; a SIGINT that
    # whoever started us ignores stays ignored.
    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_signal)
    tmp = tempfile.mkdtemp(prefix="broker_pool.")
    procs = Procs(tmp)
    status = 1
    try:
        status = 0 if run(tmp, procs) else 1
    except KeyboardInterrupt:
        say("interrupted")
        status = 128 + (STOP[0] if STOP else signal.SIGINT)
    finally:
        # A second signal does not cut the cleanup short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Results held by the traceback are gone now: collect them while the
        # server their finalisers talk to is still up.
        gc.collect()
        procs.stop_all(last=("redis",))
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
