"""Security: least-privilege ACL users for producers and workers, TLS with a CA, and
passwords that never show."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from redismq import App, BrokerUnavailable, Client
from redismq.server import LocalServer
from tests.conftest import ROOT, denied, setinfo_rule, skip_unless_ci

# What a producer needs: read the routes, append messages (the send script for dedup keys,
# delays and bounds), WAIT for replicas. Commands run inside scripts are checked too.
PRODUCER_ACL = (
    "on >producer-secret ~rmq:* resetchannels "
    "+ping +get +hget +hmget +hgetall +hkeys +smembers +xadd +wait +multi +exec +time "
    "+evalsha +eval +script|load +script|exists "
    "+set +zadd +hincrby +xinfo|groups +xlen +zcard"
)
# What a worker needs on top: consume, settle, renew, trim, heartbeat (no admin commands,
# no FLUSHALL, no CONFIG, no KEYS).
WORKER_ACL = (
    "on >worker-secret ~rmq:* resetchannels "
    "+@read +@write +@stream +@scripting +@sortedset +@hash +@set +@list +@keyspace "
    "+multi +exec +time +ping +wait +info -@dangerous -flushall -flushdb -keys -config -debug"
)


@pytest.fixture
def acl_server():
    with LocalServer() as srv:
        admin = srv.client()
        named = setinfo_rule(admin)  # as docs/security.md says for Redis 7.2+ and Valkey
        admin.execute_command("ACL", "SETUSER", "producer", *PRODUCER_ACL.split(), *named)
        admin.execute_command("ACL", "SETUSER", "worker", *WORKER_ACL.split(), *named)
        admin.execute_command("ACL", "SETUSER", "admin", "on", ">admin-secret", "~*", "+@all")
        admin.execute_command("ACL", "SETUSER", "default", "off")
        yield srv


def admin_of(srv: LocalServer) -> redis.Redis:
    return redis.Redis(port=srv.port, username="admin", password="admin-secret")


def user_url(srv: LocalServer, user: str) -> str:
    return f"redis://{user}:{user}-secret@127.0.0.1:{srv.port}/0"


def test_producer_user_can_send_but_not_consume(acl_server):
    admin = redis.Redis(port=acl_server.port, username="worker", password="worker-secret")
    worker_client = Client(user_url(acl_server, "worker"))
    worker_client.create_topic("emails", queues=2)
    producer = Client(user_url(acl_server, "producer"))
    assert producer.send("emails", {"to": "a@b.c"})
    assert producer.send("emails", {"to": "b@b.c"}, dedup_key="u1", delay=0.01)
    with pytest.raises(BrokerUnavailable, match="permission denied") as err:
        producer.consumer("emails", "mailer")
    assert "producer-secret" not in str(err.value)
    with pytest.raises(redis.exceptions.NoPermissionError):
        admin.flushall()


def test_worker_user_runs_tasks(acl_server, processes):
    url = user_url(acl_server, "worker")
    client = Client(url)
    app = App(client)

    @app.task(topic="tasks", name="tests.apps.worker_app.record")
    def record(i):  # the worker process imports its own copy of this task
        return i

    for i in range(5):
        client.send("tasks", record.body((i,)))
    worker = processes.start(
        "worker",
        "tests.apps.worker_app:app",
        "--url",
        url,
        "--processes",
        "1",
        "--topic",
        "work",
        "--burst",
        "--log-level",
        "WARNING",
    )
    assert worker.wait(60) == 0, worker.stdout.read()
    assert "worker-secret" not in worker.stdout.read()
    # The rules are all it needs. Its one refusal is the look at the eviction policy, which
    # it skips without CONFIG rights (docs/security.md).
    assert {what for _, what in denied(admin_of(acl_server))} <= {"config|get"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    if not shutil.which("openssl"):
        skip_unless_ci("openssl is not installed: cannot make test certificates")
    d = tmp_path_factory.mktemp("certs")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    for ca in ("ca", "other-ca"):
        run(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "1",
            "-subj",
            f"/CN={ca}",
        )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    )
    return {name: d / f"{name}.pem" for name in ("ca", "other-ca", "server")} | {
        "key": d / "server.key"
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_server(certs):
    port = free_port()
    args = [
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(certs["server"]),
        "--tls-key-file",
        str(certs["key"]),
        "--tls-ca-cert-file",
        str(certs["ca"]),
        "--tls-auth-clients",
        "no",
    ]
    srv = LocalServer(extra_args=args)
    try:
        srv.start()
    except Exception as exc:  # a binary without TLS refuses the options
        if "TLS" in str(exc) or "tls" in str(exc):
            skip_unless_ci(f"{srv.binary} has no TLS support: {exc}")
        raise
    yield port
    srv.stop()


@pytest.mark.tls
def test_rediss_with_the_right_ca_works(tls_server, certs):
    client = Client(f"rediss://127.0.0.1:{tls_server}/0?ssl_ca_certs={certs['ca']}")
    mid = client.send("secure", {"x": 1})
    consumer = client.consumer("secure", "g")
    assert [m.id for m in consumer.receive(count=10, block=0.5)] == [mid]


@pytest.mark.tls
def test_rediss_with_a_wrong_ca_fails_with_one_clear_line(tls_server, certs):
    url = f"rediss://127.0.0.1:{tls_server}/0?ssl_ca_certs={certs['other-ca']}"
    with pytest.raises(BrokerUnavailable, match="cannot reach Redis"):
        Client(url).ping()
    out = subprocess.run(
        [sys.executable, "-m", "redismq.cli.main", "status", "--url", url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert len((out.stderr + out.stdout).strip().splitlines()) == 1
