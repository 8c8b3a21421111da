#!/usr/bin/env python3
"""Ingest benchmark: records/s from each source into a channel, and latency
from the record's own timestamp at the source to its publication's `time`.

Starts the broker (PostgreSQL, redis-server or mosquitto, as the tests do),
Tidings pinned to core 0 with one consumer, writes N records from core 1 as
fast as the source's CLI takes them, then reads the channel's history.
Loopback only. Usage: scripts/bench_ingest.py {postgres|redis|mqtt} [N] [bulk]
(`bulk`: PostgreSQL rows in one transaction, to measure the drain rate.)
"""
import json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/tidings")
KEY = "bench-ingest-key"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port):
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def api(addr, method, body):
    req = urllib.request.Request(f"http://{addr}/v1/api/{method}", json.dumps(body).encode(),
                                 {"Authorization": f"Bearer {KEY}"})
    return json.load(urllib.request.urlopen(req))


def metric(addr, name):
    text = urllib.request.urlopen(f"http://{addr}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def start_tidings(tmp, consumer):
    conf = os.path.join(tmp, "tidings.toml")
    port = free_port()
    with open(conf, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\nnode_name = "bench"\n[auth]\ntoken_secret = "bench-ingest-secret"\n'
                f'api_keys = ["{KEY}"]\n[namespaces.bench]\nhistory_size = 1000000\nhistory_ttl = "1h"\n'
                f'max_message_size = 4096\n{consumer}')
    p = subprocess.Popen(["taskset", "-c", "0", BIN, "--config", conf, "--data-dir", os.path.join(tmp, "data")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    addr = f"127.0.0.1:{port}"
    for _ in range(600):
        if 'tidings_consumer_up{consumer="bench"} 1' in urllib.request.urlopen(f"http://{addr}/metrics").read().decode():
            return p, addr
        time.sleep(0.05)
    raise SystemExit("the consumer did not connect")


def core1(cmd, **kw):
    return subprocess.run(["taskset", "-c", "1"] + cmd, check=True, **kw)


def run(source, n):
    tmp = tempfile.mkdtemp(prefix="bench-ingest-")
    broker = None
    try:
        if source == "redis":
            port = free_port()
            broker = subprocess.Popen(["taskset", "-c", "1", "redis-server", "--port", str(port), "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL)
            wait_port(port)
            tidings, addr = start_tidings(tmp, f'[[consumers]]\nname = "bench"\ntype = "redis_stream"\n'
                                          f'url = "redis://127.0.0.1:{port}"\nstream = "in"\nbatch_size = 500\n')
            lines = "".join(f"XADD in * channel bench:c data '{{\"n\":{i}}}'\n" for i in range(n))
            t0 = time.time()
            core1(["redis-cli", "-p", str(port)], input=lines.encode(), stdout=subprocess.DEVNULL)
        elif source == "postgres":
            sys.path.insert(0, ROOT)
            port = free_port()
            pgbin = sorted(os.listdir("/usr/lib/postgresql"))[-1]
            pg = f"/usr/lib/postgresql/{pgbin}/bin"
            as_pg = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] if os.geteuid() == 0 else []
            if os.geteuid() == 0:
                shutil.chown(tmp, "postgres", "postgres")
            subprocess.run(as_pg + [f"{pg}/initdb", "-U", "postgres", "--auth=trust", "-D", f"{tmp}/pg"],
                           check=True, stdout=subprocess.DEVNULL)
            broker = subprocess.Popen(["taskset", "-c", "1"] + as_pg + [f"{pg}/postgres", "-D", f"{tmp}/pg", "-p", str(port), "-k", tmp,
                                       "-c", "listen_addresses=127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port)
            time.sleep(1)
            url = f"postgres://postgres@127.0.0.1:{port}/postgres"
            tidings, addr = start_tidings(tmp, f'[[consumers]]\nname = "bench"\ntype = "postgres_outbox"\nurl = "{url}"\n'
                                          f'stream = "outbox"\ncreate = true\nbatch_size = 500\n')
            time.sleep(1)
            # One transaction per row, as a backend's would be; the time of
            # each row's insert travels in its data.
            sql = "".join("INSERT INTO outbox (channel, data) VALUES ('bench:c', json_build_object('n', %d, 't', "
                          "(extract(epoch from clock_timestamp()) * 1000)::bigint));\n" % i for i in range(n))
            if BULK:
                # One transaction: what the consumer drains per second.
                sql = ("INSERT INTO outbox (channel, data) SELECT 'bench:c', json_build_object('n', n, 't', "
                       "(extract(epoch from clock_timestamp()) * 1000)::bigint) FROM generate_series(0, %d) AS n;\n" % (n - 1))
            t0 = time.time()
            core1([f"{pg}/psql", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres"],
                  input=sql.encode(), stdout=subprocess.DEVNULL)
        elif source == "mqtt":
            port = free_port()
            conf = os.path.join(tmp, "m.conf")
            with open(conf, "w") as f:
                f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                        + ("user root\n" if os.geteuid() == 0 else ""))
            broker = subprocess.Popen(["taskset", "-c", "1", "mosquitto", "-c", conf], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            wait_port(port)
            tidings, addr = start_tidings(tmp, f'[[consumers]]\nname = "bench"\ntype = "mqtt"\nurl = "mqtt://127.0.0.1:{port}"\n'
                                          f'topics = ["d/+/t"]\ngroup = "bench"\nchannel_template = "bench:{{1}}"\n'
                                          f'[consumers.fields]\nidempotency_key = "id"\n')
            t0 = time.time()
            lines = "".join(json.dumps({"id": f"r{i}", "n": i}) + "\n" for i in range(n))
            core1(["mosquitto_pub", "-p", str(port), "-q", "1", "-t", "d/c/t", "-l"], input=lines.encode())
        else:
            raise SystemExit(__doc__)
        wrote = time.time() - t0
        deadline = time.time() + 300
        while metric(addr, 'tidings_consumer_records_total{consumer="bench",outcome="published"}') < n:
            if time.time() > deadline:
                raise SystemExit("not all records were published")
            time.sleep(0.05)
        pubs = []
        while len(pubs) < n:
            body = {"channel": "bench:c", "limit": 1000}
            if pubs:
                body["since"] = {"offset": pubs[-1]["offset"], "epoch": epoch}
            page = api(addr, "history", body)
            epoch = page["epoch"]
            if not page["publications"]:
                break
            pubs += page["publications"]
        assert [p["data"]["n"] for p in pubs] == list(range(n)), "in order, each once"
        times = [p["time"] for p in pubs]
        span = (times[-1] - times[0]) / 1000 or 1e-3
        if source == "redis":
            # The entry id is the insert time in ms: read them back.
            ids = subprocess.run(["redis-cli", "-p", str(port), "XRANGE", "in", "-", "+"], capture_output=True, text=True).stdout
            born = [int(l.split("-")[0]) for l in ids.splitlines() if l and l[0].isdigit() and "-" in l]
        elif source == "postgres":
            born = [p["data"]["t"] for p in pubs]
        else:
            born = None
        out = {"source": source, "records": n, "producer_s": round(wrote, 2),
               "ingest_per_s": round(n / span), "server_cpu_s": None}
        if born:
            lat = sorted(t - b for t, b in zip(times, born))
            out["latency_ms_p50"] = lat[len(lat) // 2]
            out["latency_ms_p99"] = lat[int(len(lat) * 0.99)]
        stat = open(f"/proc/{tidings.pid}/stat").read().split()
        out["server_cpu_s"] = round((int(stat[13]) + int(stat[14])) / os.sysconf("SC_CLK_TCK"), 2)
        print(json.dumps(out))
        tidings.kill()
    finally:
        if broker:
            broker.kill()
        shutil.rmtree(tmp, ignore_errors=True)


BULK = "bulk" in sys.argv[3:]

if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    run(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20000)
